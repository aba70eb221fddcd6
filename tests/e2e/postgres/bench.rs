//! `zoomwire bench --journal postgres --nodes 3` end to end at a tiny
//! scale: the bench starts its own scratch PostgreSQL server (no
//! `ZOOMWIRE_DATABASE_URL`), three nodes, and kills the WebSocket's holder
//! mid-stream; the report has the failover's figures and every post exactly
//! once. (The figures themselves are measured with a release build, by hand.)

use std::process::Command;

use crate::support::bench;
use crate::support::postgres as pg;

#[test]
fn a_small_bench_of_three_nodes_times_the_failover_of_a_killed_holder() {
    if pg::binaries().is_none() {
        return;
    }
    let (stdout, stderr) = bench([
        "--events",
        "300",
        "--rate",
        "100",
        "--seconds",
        "1",
        "--journal",
        "postgres",
        "--nodes",
        "3",
        "--lease-ttl",
        "2",
    ]);
    assert!(
        stderr.contains("starting a scratch PostgreSQL server"),
        "{stderr}"
    );
    for figure in [
        "journal postgres (3 nodes",
        "lease 2s",
        "events/s",
        "µs CPU per event",
        "p99",
        "kill -9 of the holder",
        "new holder connected",
        "first post of an event sent after the kill",
        "most connections open at once: 1, frames that reached two: 0",
        "every expected post arrived exactly once",
        "--nodes 3 --lease-ttl 2",
    ] {
        assert!(stdout.contains(figure), "{figure} in:\n{stdout}");
    }
    assert!(!stdout.contains("FAILED"), "{stdout}");
    assert!(!stdout.contains("never"), "{stdout}");
    // Killed within a 2 s lease: a new holder well within the lease and a
    // margin for a loaded machine.
    let connected = stdout
        .split("new holder connected ")
        .nth(1)
        .and_then(|rest| rest.split(" s").next())
        .and_then(|secs| secs.parse::<f64>().ok())
        .expect("the reconnection time");
    assert!(connected < 2.0 + 5.0, "{connected} s in:\n{stdout}");
}

#[test]
fn nodes_without_postgres_are_refused() {
    let output = Command::new(env!("CARGO_BIN_EXE_zoomwire"))
        .args(["bench", "--journal", "memory", "--nodes", "3"])
        .output()
        .expect("zoomwire runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--journal postgres"), "{stderr}");
}
