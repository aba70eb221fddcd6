//! The command line as a user runs it: output and exit codes of `check`,
//! `test`, `fire`, `replay` and `schema` on the real binary.

use std::process::{Command, Output};

fn zoomwire(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zoomwire"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("ZOOMWIRE_RULES")
        .env_remove("ZOOMWIRE_SCRIPTS")
        .output()
        .expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn check_accepts_the_shipped_rules() {
    let output = zoomwire(&["check"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout(&output).starts_with("ok: 3 rules (1 scheduled"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn check_lists_errors_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "name: bad\non: a.b\nmode: sometimes\nfoo: 1\ndo: \"1\"\n",
    )
    .unwrap();
    let output = zoomwire(&["check", dir.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.yaml:3:7: rule \"bad\": `mode`: unknown variant `sometimes`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("bad.yaml:4:1: rule \"bad\": unknown key `foo`"),
        "{stderr}"
    );
    assert!(stderr.contains("2 errors found"), "{stderr}");
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(zoomwire(&["fire"]).status.code(), Some(2));
    assert_eq!(zoomwire(&["no-such-command"]).status.code(), Some(2));
    assert_eq!(
        zoomwire(&["fire", "--dry-run", "/no/such/file.json"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn test_runs_every_rule_test_and_counts() {
    let output = zoomwire(&["test", "rules", "examples"]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    let last = text.lines().last().unwrap_or_default();
    assert!(last.ends_with("passed, 0 failed"), "{text}");
    assert!(
        text.contains("ok   recording-to-slack › posts the share link"),
        "{text}"
    );
}

#[test]
fn test_fails_with_exit_1_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("r.yaml"),
        "name: r\non: a.b\nallow: [slack]\ndo: slack::post(\"#a\", \"hi\")\ntests:\n  - name: wrong channel\n    event: {event: a.b}\n    expect:\n      - slack.post: {channel: \"#b\"}\n",
    )
    .unwrap();
    let output = zoomwire(&["test", dir.path().to_str().unwrap()]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL r › wrong channel"), "{text}");
    assert!(
        text.contains("expected slack.post {\"channel\":\"#b\"}"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("0 passed, 1 failed"), "{text}");
}

#[test]
fn fire_dry_run_prints_runs_and_effects() {
    let output = zoomwire(&[
        "fire",
        "--dry-run",
        "examples/events/recording.completed.json",
    ]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("✓ recording-to-slack: succeeded"), "{text}");
    assert!(
        text.contains("1. slack.post {\"channel\":\"#recordings\""),
        "{text}"
    );
}

#[test]
fn fire_accepts_a_websocket_frame_on_stdin_and_explains() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_zoomwire"))
        .args(["fire", "--dry-run", "--explain", "-"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let frame = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/frames/ws_frame_message.json"
    ))
    .unwrap();
    child.stdin.take().unwrap().write_all(&frame).unwrap();
    let output = child.wait_with_output().unwrap();
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("explain recording-to-slack: does not fire: type meeting.started does not match recording.completed"), "{text}");
    assert!(
        text.contains("explain weekly-report: does not fire: scheduled rule"),
        "{text}"
    );
    assert!(text.contains("no rule fired"), "{text}");
}

#[test]
fn fire_explains_a_false_condition() {
    let dir = tempfile::tempdir().unwrap();
    let event = dir.path().join("short.json");
    std::fs::write(&event, r#"{"event":"recording.completed","event_ts":1,"payload":{"object":{"uuid":"u","duration":1}}}"#).unwrap();
    let output = zoomwire(&["fire", "--dry-run", "--explain", event.to_str().unwrap()]);
    assert!(
        stdout(&output).contains("explain recording-to-slack: does not fire: condition is false"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn replay_summarises_a_stream() {
    let dir = tempfile::tempdir().unwrap();
    let stream = dir.path().join("stream.jsonl");
    let recording = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/events/recording.completed.json"
    ))
    .unwrap();
    let one_line: serde_json::Value = serde_json::from_str(&recording).unwrap();
    let frame = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/frames/ws_frame_message.json"
    ))
    .unwrap();
    let frame: serde_json::Value = serde_json::from_str(&frame).unwrap();
    std::fs::write(
        &stream,
        format!("{one_line}\n{frame}\nnot json\n{one_line}\n"),
    )
    .unwrap();
    let output = zoomwire(&["replay", "--dry-run", stream.to_str().unwrap()]);
    let text = stdout(&output);
    assert!(
        text.contains("3 events (1 duplicates, 1 unreadable lines), 1 runs: 1 succeeded (dry run)"),
        "{text}"
    );
    assert_eq!(
        output.status.code(),
        Some(1),
        "an unreadable line is reported as a failure"
    );
}

#[test]
fn schema_is_json_with_the_rule_keys() {
    let output = zoomwire(&["schema"]);
    assert_eq!(output.status.code(), Some(0));
    let schema: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(schema["$defs"]["rule"]["properties"]["when"].is_object());
}
