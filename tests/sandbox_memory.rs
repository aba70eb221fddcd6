//! The sandbox's memory budget on the real binary, where memory can be
//! measured: every memory bomb (one rule each, in one daemon) fails its own
//! run, with the limit it broke, in well under a second; the daemon's peak
//! resident memory (`VmHWM`, reset before each bomb) grows by no more than
//! the budget plus a margin; and a well-behaved rule still runs after them.
//! A module whose top-level code is a bomb is refused at hot reload (the
//! daemon keeps running, within the same bound) and by `zoomwire check`,
//! which also keeps to one load timeout for the whole scripts folder.
//!
//! Run with `--nocapture` to see each bomb's figures.

#[path = "support/daemon.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Daemon, WAIT, Workspace};
use zoomwire::script::SandboxLimits;

/// Allowed growth past the budget: allocator overhead, the operation that
/// crossed the budget, and the daemon's own work during the run (the store,
/// logs, the record).
const MARGIN_MIB: u64 = 24;

/// A 1 MB string, in a variable `s`.
const BIG: &str = r#"let s = "y"; s.pad(1000000, "y");"#;

/// Each bomb: rule name, script, and the limits its run may fail on (the
/// first one it reaches, which can depend on the machine's speed: the
/// budget, or the size scan that runs every 10 ms).
fn bombs() -> Vec<(&'static str, String, &'static [&'static str])> {
    let many_variables: String = (0..900)
        .map(|i| format!("let v{i} = []; v{i}.pad(45000, {i});\n"))
        .collect();
    vec![
        // The audit's bombs: keys of a megabyte, and megabyte strings made in a callback.
        (
            "map-keys",
            format!("{BIG} let m = #{{}}; for i in 0..2500 {{ m[`${{i}}` + s] = 1; }}"),
            &["max_key_size", "max_memory"],
        ),
        (
            "keys-within-the-key-limit",
            r#"let k = "k"; k.pad(1000, "k"); let m = #{}; for i in 0..200000 { m[`${i}` + k] = i; }"#
                .into(),
            &["max_string_size", "max_memory"],
        ),
        (
            "callback-strings",
            format!("{BIG} let a = []; a.pad(2000, 0); a.map(|i| s + i)"),
            &["max_memory"],
        ),
        (
            "string-doubling",
            r#"let s = "x"; loop { s += s; }"#.into(),
            &["max_string_size"],
        ),
        (
            "string-append-in-a-loop",
            r#"let parts = []; loop { let t = ""; for j in 0..1000 { t += "abcdefghij"; } parts.push(t); }"#
                .into(),
            &["max_string_size", "max_memory"],
        ),
        (
            "nested-arrays-in-recursion",
            format!(
                "fn grow(n) {{ {BIG} let a = []; a.pad(20000, [n]); if n < 30 {{ grow(n + 1) }} else {{ loop {{}} }} }} grow(0)"
            ),
            &["max_memory"],
        ),
        ("many-variables", many_variables, &["max_memory"]),
        (
            "blob-growth",
            "let blobs = []; loop { blobs.push(blob(40000, 1)); }".into(),
            &["max_array_size"],
        ),
        (
            "closures-capturing-big-values",
            r#"let fs = []; for i in 0..1000 { let t = "y"; t.pad(1000000, "z"); fs.push(|| t); } fs.len()"#
                .into(),
            &["max_string_size", "max_memory"],
        ),
        (
            "curried-values",
            "let f = Fn(\"x\"); loop { let t = \"y\"; t.pad(1000000, \"z\"); f = f.curry(t); }".into(),
            &["max_string_size", "max_memory"],
        ),
        (
            "to-json-of-one-string-curried-1000-times",
            format!(
                "{BIG} let f = Fn(\"x\"); for i in 0..1000 {{ f = f.curry(s); }} #{{f: f}}.to_json().len()"
            ),
            &["max_string_size"],
        ),
        (
            "replace-with-a-longer-string",
            r#"let s = "y"; s.pad(10000, "y"); let t = "z"; t.pad(100000, "z"); s.replace("", t); s.len()"#
                .into(),
            &["max_string_size"],
        ),
        (
            "split-into-bytes",
            format!("{BIG} s.split(\"\").len()"),
            &["max_array_size"],
        ),
    ]
}

fn indent(script: &str) -> String {
    script.lines().map(|line| format!("  {line}\n")).collect()
}

fn rule(name: &str, script: &str) -> String {
    format!(
        "name: {name}\non: meeting.started\nwhen: event.payload.object.topic == \"{name}\"\nallow: [slack]\ntimeout: 60s\ndo: |\n{}",
        indent(script)
    )
}

fn event(topic: &str, n: u64) -> Value {
    json!({
        "event": "meeting.started",
        "event_ts": 1_732_040_000_000u64 + n,
        "payload": {
            "account_id": "sim-account",
            "object": {"id": 85_512_000_000u64 + n, "uuid": format!("bomb-{n}=="), "host_id": "h", "topic": topic}
        }
    })
}

/// `VmHWM` and `VmRSS` of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process runs");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Resets `VmHWM` to the current RSS, so the next reading is the peak of what follows.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("clear_refs is writable");
}

fn budget_mib() -> u64 {
    SandboxLimits::default().max_memory as u64 >> 20
}

/// The "run finished" line of `rule`'s run.
async fn finished(daemon: &Daemon, rule: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(line) = daemon
            .logged("run finished")
            .into_iter()
            .find(|line| line["rule"] == rule)
        {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "{rule} did not finish:\n{}",
            daemon.stderr()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_memory_bomb_fails_its_own_run_and_the_daemon_stays_within_the_budget() {
    let ws = Workspace::new().await;
    let bombs = bombs();
    for (name, script, _) in &bombs {
        ws.write_rule(&format!("{name}.yaml"), &rule(name, script));
    }
    ws.write_rule(
        "good.yaml",
        &rule(
            "good",
            r##"slack::post("#general", `still running: ${event.payload.object.uuid}`);"##,
        ),
    );
    let daemon = ws.start(1).await;
    let pid = daemon.pid();
    let allowed_kib = (budget_mib() + MARGIN_MIB) << 10;
    let (_, start) = memory_kib(pid);
    eprintln!(
        "budget {} MiB, margin {MARGIN_MIB} MiB, daemon at {:.1} MiB",
        budget_mib(),
        start as f64 / 1024.0
    );
    for (n, (name, _, limits)) in bombs.iter().enumerate() {
        reset_peak(pid);
        let (_, before) = memory_kib(pid);
        ws.sim.emit_event(None, &event(name, n as u64));
        let line = finished(&daemon, name).await;
        let (peak, after) = memory_kib(pid);
        let error = line["error"].as_str().unwrap_or_default();
        let elapsed_ms = line["elapsed_ms"].as_u64().unwrap_or(u64::MAX);
        eprintln!(
            "{name}: peak {:.1} MiB (+{:.1} over {:.1}), {elapsed_ms} ms, rss after {:.1} MiB: {error}",
            peak as f64 / 1024.0,
            (peak - before) as f64 / 1024.0,
            before as f64 / 1024.0,
            after as f64 / 1024.0,
        );
        assert_eq!(line["outcome"], "failed", "{name}: {line}");
        assert!(
            limits.iter().any(|limit| error.contains(limit)),
            "{name}: {error}"
        );
        assert!(elapsed_ms < 3_000, "{name} took {elapsed_ms} ms");
        assert!(
            peak.saturating_sub(start) <= allowed_kib,
            "{name}: the daemon grew by {} KiB, more than the budget and margin ({allowed_kib} KiB)",
            peak - start
        );
        // What the run held is given back: the next bomb starts where the first did.
        assert!(
            after.saturating_sub(start) <= MARGIN_MIB << 10,
            "{name}: the daemon kept {} KiB after the run",
            after - start
        );
    }
    ws.sim.emit_event(None, &event("good", 1000));
    let line = finished(&daemon, "good").await;
    assert_eq!(line["outcome"], "succeeded", "{line}");
    assert_eq!(ws.slack_texts("#general"), ["still running: bomb-1000=="]);
}

/// Top-level code that holds more than the budget: deeper and deeper
/// frames, each with a megabyte string and an array of 45,000 items.
const MODULE_BOMB: &str = r#"
fn grow(n) {
    let s = "y";
    s.pad(1000000, "y");
    let a = [];
    a.pad(45000, n);
    if n < 30 { grow(n + 1) } else { loop {} }
}
grow(0);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_module_bomb_is_refused_at_hot_reload_and_the_daemon_keeps_running() {
    let ws = Workspace::new().await;
    ws.write_rule(
        "good.yaml",
        &rule(
            "good",
            r##"slack::post("#general", event.payload.object.uuid);"##,
        ),
    );
    let daemon = ws.start(1).await;
    let pid = daemon.pid();
    reset_peak(pid);
    let (_, before) = memory_kib(pid);
    let started = Instant::now();
    std::fs::write(ws.root().join("scripts").join("bomb.rhai"), MODULE_BOMB).unwrap();
    let refused = daemon
        .wait_for_log("reload refused: the running rules stay in place until the files compile")
        .await;
    let (peak, _) = memory_kib(pid);
    eprintln!(
        "module bomb at reload: peak +{:.1} MiB over {:.1} MiB, refused after {:?}",
        (peak - before) as f64 / 1024.0,
        before as f64 / 1024.0,
        started.elapsed()
    );
    assert_eq!(refused["rules"], 1, "{refused}");
    let errors = daemon.stderr();
    assert!(
        errors.contains("bomb.rhai") && errors.contains("memory budget of the scripts folder"),
        "{errors}"
    );
    assert!(peak.saturating_sub(before) <= (budget_mib() + MARGIN_MIB) << 10);

    ws.sim.emit_event(None, &event("good", 1));
    let line = finished(&daemon, "good").await;
    assert_eq!(line["outcome"], "succeeded", "{line}");
}

/// Runs `zoomwire check` in `dir`, sampling its `VmHWM` every millisecond
/// while it runs (the last sample is the peak up to a millisecond before it
/// ended). Returns the output and the peak in KiB.
async fn check_with_peak(ws: &Workspace, dir: &std::path::Path) -> (std::process::Output, u64) {
    let mut command = ws.command(&["check", "rules", "--scripts", "scripts"]);
    command
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = command.spawn().expect("check starts");
    let pid = child.id().expect("check runs");
    let sampler = tokio::task::spawn_blocking(move || {
        let mut peak = 0;
        while let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            let hwm = status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse::<u64>().ok());
            match hwm {
                Some(hwm) => peak = peak.max(hwm),
                None => break,
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        peak
    });
    let output = child.wait_with_output().await.expect("check ends");
    (output, sampler.await.expect("sampler"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_refuses_module_bombs_within_one_load_timeout_and_the_budget() {
    let ws = Workspace::new().await;
    let dir = tempfile::tempdir().unwrap();
    let scripts = dir.path().join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules").join("r.yaml"), rule("r", "1")).unwrap();
    std::fs::write(scripts.join("a_bomb.rhai"), MODULE_BOMB).unwrap();
    std::fs::write(
        scripts.join("b_keys.rhai"),
        format!("{BIG} let m = #{{}}; for i in 0..50000 {{ m[`${{i}}` + s] = 1; }}"),
    )
    .unwrap();
    // Slow modules: each operation searches a megabyte, so each would run
    // far past the timeout on its own (its operations last minutes).
    for name in ["c_slow", "d_slow", "e_slow"] {
        std::fs::write(
            scripts.join(format!("{name}.rhai")),
            format!("{BIG} loop {{ s.index_of(\"z\"); }}"),
        )
        .unwrap();
    }
    std::fs::write(
        dir.path().join("zoomwire.yaml"),
        "sandbox: { load_timeout: 2s }\n",
    )
    .unwrap();
    let started = Instant::now();
    let (output, peak) = check_with_peak(&ws, dir.path()).await;
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!(
        "check with module bombs: {elapsed:?}, peak {:.1} MiB\n{stderr}",
        peak as f64 / 1024.0
    );
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("a_bomb.rhai") && stderr.contains("memory budget of the scripts folder"),
        "{stderr}"
    );
    assert!(stderr.contains("b_keys.rhai"), "{stderr}");
    for name in ["c_slow", "d_slow", "e_slow"] {
        assert!(stderr.contains(&format!("{name}.rhai")), "{stderr}");
    }
    assert!(stderr.contains("(load_timeout = 2s)"), "{stderr}");
    assert!(
        elapsed < Duration::from_secs(5),
        "three slow modules share one 2s load timeout, took {elapsed:?}"
    );
    // The process's own baseline (tens of MiB) is inside the margin here.
    assert!(
        peak <= (budget_mib() + 2 * MARGIN_MIB) << 10,
        "peak {peak} KiB"
    );
}
