//! `zoomwire bench` end to end at a tiny scale: the real binary hosts the
//! simulator and runs itself as the daemon, or the Node.js client it is
//! compared against, and the report has every figure. (The figures
//! themselves are measured with a release build, by hand.)

use std::process::Command;

use crate::support::{bench, skip_unless_ci};

#[test]
fn a_small_bench_reports_throughput_latency_and_memory() {
    let (stdout, _) = bench([
        "--events",
        "300",
        "--rate",
        "200",
        "--seconds",
        "1",
        "--journal",
        "off",
        "--journal",
        "normal",
    ]);
    for figure in [
        "events/s",
        "µs CPU per event",
        "p50",
        "p99",
        "VmHWM",
        "MiB",
        "fdatasync",
        "every expected post arrived exactly once",
    ] {
        assert!(stdout.contains(figure), "{figure} in:\n{stdout}");
    }
    assert!(stdout.contains("journal memory"), "{stdout}");
    // The disk is timed for as long as the latency phase, and the SQLite
    // journal's commits of that phase are counted (the memory journal has none).
    assert!(stdout.contains("over 10 ms (the floor"), "{stdout}");
    let commits: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("journal commits in the latency phase"))
        .collect();
    assert_eq!(
        commits.len(),
        1,
        "the SQLite journal's commits only:\n{stdout}"
    );
    assert!(!stdout.contains("did not finish"), "{stdout}");
    // The CPU per event at the latency phase's steady rate, for each journal.
    let steady = stdout.lines().filter(|l| l.contains("steady cpu")).count();
    assert_eq!(steady, 2, "{stdout}");
    // The CPU split names the runtime's threads, and the SQLite journal's
    // writer (its whole name: the kernel keeps 15 bytes of a thread's name).
    let splits: Vec<&str> = stdout.lines().filter(|l| l.contains("cpu split")).collect();
    assert_eq!(splits.len(), 2, "one split per journal measured:\n{stdout}");
    assert!(splits[1].contains("zoomwire-writer "), "{stdout}");
    assert!(
        splits.iter().all(|l| l.contains("tokio-rt-worker ")),
        "{stdout}"
    );
    // The header names the profile that built the binary: its folder.
    let profile = std::path::Path::new(env!("CARGO_BIN_EXE_zoomwire"))
        .parent()
        .and_then(|folder| folder.file_name())
        .and_then(|name| name.to_str())
        .expect("the binary is in its profile's folder");
    let build = if cfg!(debug_assertions) {
        "DEBUG"
    } else {
        profile
    };
    assert!(
        stdout.contains(&format!("zoomwire bench ({build} build)")),
        "{stdout}"
    );
}

#[test]
fn the_node_client_is_asked_for_where_it_is_not_installed() {
    let empty = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_zoomwire"))
        .args(["bench", "--journal", "memory", "--journal", "node"])
        .arg("--node-client")
        .arg(empty.path())
        .output()
        .expect("zoomwire runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("no client.js in"), "{stderr}");
    assert!(stderr.contains("--node-client"), "{stderr}");
}

/// The client the README's ratios are measured against works: it gets the
/// bench's workload and every post it must make arrives exactly once. It
/// needs Node.js and `npm ci` in `bench/node` (`.ci/run` does both); without
/// them the test skips with a note, or fails where `CI` is set.
#[test]
fn the_node_client_makes_every_post_exactly_once() {
    let client = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/node");
    let node = Command::new("node").arg("--version").output();
    if node.is_err() || !client.join("node_modules/ws").is_dir() {
        skip_unless_ci("Node.js or bench/node's packages (`npm ci`) are missing");
        return;
    }
    let client = client.to_str().expect("the repository's path is text");
    let (stdout, _) = bench([
        "--events",
        "3000",
        "--rate",
        "300",
        "--seconds",
        "1",
        "--journal",
        "node",
        "--node-client",
        client,
    ]);
    assert!(stdout.contains("hand-written Node.js client"), "{stdout}");
    assert!(
        stdout.contains("every expected post arrived exactly once"),
        "{stdout}"
    );
    assert!(stdout.contains("runs: 0 failed"), "{stdout}");
}
