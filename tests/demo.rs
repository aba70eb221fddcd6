//! `zoomwire demo --fast` as a user runs it: the real binary, the simulator,
//! the mail sink and the engine on loopback, ending by itself with a summary;
//! from the repository and from a folder without rules (the starter rules
//! built into the binary).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the binary with `args` from the repository root; fails after `limit`.
fn run_zoomwire(args: &[&str], limit: Duration) -> (Option<i32>, String, String) {
    run_zoomwire_in(Path::new(env!("CARGO_MANIFEST_DIR")), args, limit)
}

/// Runs the binary with `args` in `dir`; fails after `limit`.
fn run_zoomwire_in(dir: &Path, args: &[&str], limit: Duration) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_zoomwire"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("zoomwire starts");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).unwrap();
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).unwrap();
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("zoomwire {args:?} did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.code(), out.join().unwrap(), err.join().unwrap())
}

/// The number after `label` on the summary line that starts with it.
fn summary_count(stdout: &str, label: &str) -> usize {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{stdout}"));
    line.trim_start()[label.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count on `{line}`"))
}

#[test]
fn the_fast_demo_plays_the_week_and_ends_with_a_summary() {
    let (code, stdout, stderr) = run_zoomwire(&["demo", "--fast"], Duration::from_secs(120));
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("Summary"), "{stdout}");
    assert!(summary_count(&stdout, "events sent:") >= 20, "{stdout}");
    assert!(summary_count(&stdout, "slack posts:") > 0, "{stdout}");
    assert!(summary_count(&stdout, "emails received:") >= 1, "{stdout}");
    assert!(summary_count(&stdout, "zoom rest calls:") > 0, "{stdout}");
    // Every rule of the repository ran, the scheduled one through the scheduler.
    for rule in ["meeting-ended-email", "recording-to-slack", "weekly-report"] {
        assert!(
            stdout.contains(&format!("✓ {rule}")),
            "{rule} succeeded: {stdout}"
        );
    }
    assert!(stdout.contains("weekly-report 1"), "{stdout}");
    assert!(
        stdout.contains("mail sink got \"Attendance: Board Review"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Slack #ops got: :calendar: Weekly report"),
        "{stdout}"
    );
    assert!(!stdout.contains("failed"), "{stdout}");
    // Logs stay quiet: nothing at info level.
    assert!(!stderr.contains(" INFO "), "{stderr}");
}

#[test]
fn a_missing_rules_folder_is_a_usage_error() {
    let (code, _, stderr) = run_zoomwire(
        &["demo", "--fast", "--rules", "no-such-folder"],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no-such-folder"), "{stderr}");
}

#[test]
fn without_a_rules_folder_the_demo_runs_the_starter_rules_built_in() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) =
        run_zoomwire_in(dir.path(), &["demo", "--fast"], Duration::from_secs(120));
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("rules      the starter rules built into zoomwire (no rules folder here; `zoomwire init` writes them out): meeting-ended-email, recording-to-slack, weekly-report"),
        "{stdout}"
    );
    for rule in ["meeting-ended-email", "recording-to-slack", "weekly-report"] {
        assert!(stdout.contains(&format!("✓ {rule}")), "{rule}: {stdout}");
    }
    assert!(summary_count(&stdout, "emails received:") >= 1, "{stdout}");
    assert!(!stdout.contains("failed"), "{stdout}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written where it ran"
    );
}

#[test]
fn the_demo_runs_the_configured_rules_with_the_configured_vars() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mine")).unwrap();
    std::fs::write(
        dir.path().join("zoomwire.yaml"),
        "rules: mine\nvars: { channel: \"#ops\" }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("mine/hello.yaml"),
        "name: hello\non: meeting.started\nallow: [slack]\ndo: slack::post(vars.channel, \"hello\")\n",
    )
    .unwrap();
    let (code, stdout, stderr) =
        run_zoomwire_in(dir.path(), &["demo", "--fast"], Duration::from_secs(120));
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("rules      mine: hello"), "{stdout}");
    assert!(stdout.contains("Slack #ops got: hello"), "{stdout}");
}
