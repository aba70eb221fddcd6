//! The command line as a user runs it: output and exit codes of `check`,
//! `test`, `fire`, `replay`, `runs`, `schema`, `init` and `completions` on
//! the real binary; every command reading the project's settings
//! (`zoomwire.yaml` < `.env` < the environment, then `--rules`/`--scripts`);
//! and the README's usage lines matching what the binary accepts.

use std::path::Path;
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

/// `zoomwire ARGS` in `dir` with only `env` (and `PATH`): no variable of the
/// developer's shell leaks into the settings.
fn zoomwire_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zoomwire"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Writes `files` (path, text) under a new temporary folder.
fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

const STARTED: &str =
    r#"{"event":"meeting.started","event_ts":1,"payload":{"object":{"uuid":"u"}}}"#;

/// Posts to `vars.channel` what a module of the scripts folder says.
const POST_RULE: &str = r##"name: post
on: meeting.started
allow: [slack]
do: |
  import "greet" as greet;
  slack::post(vars.channel, greet::greeting());
tests:
  - name: posts to the configured channel
    event: { event: meeting.started, event_ts: 1, payload: { object: { uuid: "u" } } }
    expect:
      - slack.post: { channel: "#from-yaml", text: "hello from my-scripts" }
"##;

/// Passes its test only under the configured operations limit (5000); the
/// default (5,000,000) lets it finish.
const SPIN_RULE: &str = r##"name: spin
on: meeting.started
do: |
  let n = 0;
  for i in 0..10000 { n += i; }
tests:
  - name: meets the configured operations limit
    event: { event: meeting.started, event_ts: 1, payload: { object: { uuid: "u" } } }
    expect:
      - fails: "max_operations = 5000"
"##;

/// A project whose rules folder is named in `.env` (over `zoomwire.yaml`'s),
/// whose scripts folder, `vars` and sandbox limits are in `zoomwire.yaml`.
fn configured_project() -> tempfile::TempDir {
    project(&[
        (
            "zoomwire.yaml",
            "rules: yaml-rules\nscripts: my-scripts\nvars: { channel: \"#from-yaml\" }\nsandbox: { max_operations: 5000 }\n",
        ),
        (".env", "ZOOMWIRE_RULES=my-rules\n"),
        ("my-rules/post.yaml", POST_RULE),
        ("my-rules/spin.yaml", SPIN_RULE),
        (
            "my-scripts/greet.rhai",
            "fn greeting() { \"hello from my-scripts\" }\n",
        ),
        (
            "other-scripts/greet.rhai",
            "fn greeting() { \"hello from other-scripts\" }\n",
        ),
        ("started.json", STARTED),
    ])
}

#[test]
fn check_test_fire_and_replay_load_the_settings_as_run_does() {
    let dir = configured_project();
    let at = dir.path();

    let check = zoomwire_in(at, &["check"], &[]);
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));
    assert_eq!(
        stdout(&check).trim(),
        "ok: 2 rules (0 scheduled, 2 tests) in 2 files"
    );

    // The rule tests see the configured vars, scripts and limits.
    let test = zoomwire_in(at, &["test"], &[]);
    let text = stdout(&test);
    assert_eq!(test.status.code(), Some(0), "{text}{}", stderr(&test));
    assert!(text.trim_end().ends_with("2 passed, 0 failed"), "{text}");

    let fire = zoomwire_in(at, &["fire", "--dry-run", "started.json"], &[]);
    let text = stdout(&fire);
    assert_eq!(fire.status.code(), Some(1), "spin fails: {text}");
    assert!(
        text.contains(r##"slack.post {"channel":"#from-yaml","text":"hello from my-scripts"}"##),
        "{text}"
    );
    assert!(
        text.contains("error: script exceeded the operation limit (max_operations = 5000)"),
        "{text}"
    );

    let replay = zoomwire_in(at, &["replay", "--dry-run", "started.json"], &[]);
    let text = stdout(&replay);
    assert!(
        text.contains("✗ spin (meeting.started:1:u): script exceeded the operation limit (max_operations = 5000)"),
        "{text}"
    );
    assert!(
        text.contains("2 runs: 1 failed, 1 succeeded (dry run)"),
        "{text}"
    );

    // The environment overrides `.env`.
    let only_post = zoomwire_in(at, &["check"], &[("ZOOMWIRE_RULES", "my-rules/post.yaml")]);
    assert_eq!(
        stdout(&only_post).trim(),
        "ok: 1 rule (0 scheduled, 1 test) in 1 file",
        "{}",
        stderr(&only_post)
    );
}

#[test]
fn rules_and_scripts_flags_override_the_settings_on_every_rule_command() {
    let dir = configured_project();
    let at = dir.path();
    let flags = [
        "--rules",
        "my-rules/post.yaml",
        "--scripts",
        "other-scripts",
    ];
    let with = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(flags);
        zoomwire_in(at, &all, &[])
    };

    let check = with(&["check"]);
    assert_eq!(
        stdout(&check).trim(),
        "ok: 1 rule (0 scheduled, 1 test) in 1 file",
        "{}",
        stderr(&check)
    );
    // The test expects my-scripts' greeting: other-scripts' is another.
    let test = with(&["test"]);
    let text = stdout(&test);
    assert_eq!(test.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL post › posts to the configured channel"),
        "{text}"
    );
    assert!(text.contains("hello from other-scripts"), "{text}");

    for verb in ["fire", "replay"] {
        let output = with(&[verb, "--dry-run", "started.json"]);
        let text = stdout(&output);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{verb}: {text}{}",
            stderr(&output)
        );
        assert!(
            text.contains("1 succeeded") || text.contains("✓ post"),
            "{verb}: {text}"
        );
        assert!(!text.contains("spin"), "{verb}: {text}");
    }

    // Paths as arguments and `--rules` add up.
    let both = zoomwire_in(
        at,
        &[
            "check",
            "my-rules/spin.yaml",
            "--rules",
            "my-rules/post.yaml",
        ],
        &[],
    );
    assert!(
        stdout(&both).starts_with("ok: 2 rules"),
        "{}{}",
        stdout(&both),
        stderr(&both)
    );

    // `run` and `reconcile` accept them too (their own tests run them against
    // the simulator); here they stop at the missing Zoom credentials.
    for verb in [&["run"][..], &["reconcile", "--since", "2h"][..]] {
        let mut args = verb.to_vec();
        args.extend(flags);
        let output = zoomwire_in(at, &args, &[]);
        assert_eq!(output.status.code(), Some(2), "{verb:?}");
        let text = stderr(&output);
        assert!(!text.contains("unexpected argument"), "{verb:?}: {text}");
        assert!(
            text.contains("ZOOM_ACCOUNT_ID") || text.contains("zoom account"),
            "{verb:?}: {text}"
        );
    }
}

#[test]
fn bad_settings_stop_every_command_with_all_their_errors() {
    let dir = project(&[
        (
            "zoomwire.yaml",
            "sandbox:\n  max_ops: 10\n  condition_timeout: soon\n",
        ),
        ("rules/r.yaml", "name: r\non: meeting.started\ndo: \"1\"\n"),
        ("started.json", STARTED),
    ]);
    for args in [
        &["check"][..],
        &["test"],
        &["fire", "--dry-run", "started.json"],
        &["replay", "--dry-run", "started.json"],
        &["runs"],
        &["demo", "--fast"],
    ] {
        let output = zoomwire_in(dir.path(), args, &[("ZOOMWIRE_WS_HEARTBEAT", "often")]);
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {text}");
        assert!(text.contains("invalid configuration:"), "{args:?}: {text}");
        assert!(
            text.contains("ZOOMWIRE_WS_HEARTBEAT / websocket.heartbeat: invalid duration `often`"),
            "{args:?}: {text}"
        );
        assert!(
            text.contains("sandbox.condition_timeout: invalid duration `soon`"),
            "{args:?}: {text}"
        );
        assert!(
            text.contains(
                "sandbox.max_ops: unknown limit `max_ops`, expected one of: max_operations,"
            ),
            "{args:?}: {text}"
        );
    }
}

#[test]
fn runs_reads_the_configured_data_folder() {
    let dir = project(&[("zoomwire.yaml", "data: kept-here\n")]);
    let output = zoomwire_in(dir.path(), &["runs"], &[]);
    assert_eq!(output.status.code(), Some(0));
    assert!(
        stderr(&output).contains("no store at kept-here/zoomwire.db"),
        "{}",
        stderr(&output)
    );
    let output = zoomwire_in(dir.path(), &["runs"], &[("ZOOMWIRE_DATA", "from-env")]);
    assert!(stderr(&output).contains("no store at from-env/zoomwire.db"));
    let output = zoomwire_in(dir.path(), &["runs", "--data", "flag"], &[]);
    assert!(stderr(&output).contains("no store at flag/zoomwire.db"));
}

#[test]
fn check_warns_on_an_event_type_zoom_does_not_send_with_the_nearest_one() {
    let dir = project(&[(
        "rules/typo.yaml",
        "name: typo\non: [meeting.started, meeting.endd]\ndo: log::info(\"x\")\n",
    )]);
    let output = zoomwire_in(dir.path(), &["check"], &[]);
    assert_eq!(output.status.code(), Some(0), "a warning is not an error");
    assert_eq!(
        stderr(&output).trim(),
        "rules/typo.yaml:2:5: warning: rule \"typo\": `meeting.endd` is not one of Zoom's event types: did you mean `meeting.ended`?"
    );
    assert_eq!(
        stdout(&output).trim(),
        "ok: 1 rule (0 scheduled, 0 tests) in 1 file, 1 warning"
    );
}

#[test]
fn check_reports_a_host_function_the_rule_does_not_allow_at_its_call() {
    let dir = project(&[
        (
            "rules/notify.yaml",
            "name: notify\non: meeting.ended\nallow: [slack]\ndo: |\n  import \"mail\" as mail;\n  slack::post(\"#ops\", \"ended\");\n  email::send(#{to: \"a@b.c\", subject: \"s\", text: \"t\"});\n  mail::tell(\"ended\");\n",
        ),
        (
            "rules/fine.yaml",
            "name: fine\non: meeting.ended\nallow: [email]\ndo: |\n  import \"mail\" as mail;\n  mail::tell(\"ended\");\n",
        ),
        (
            "scripts/mail.rhai",
            "fn tell(text) {\n    email::send(#{to: \"ops@example.com\", subject: text, text: text})\n}\n",
        ),
    ]);
    let output = zoomwire_in(dir.path(), &["check"], &[]);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let lines: Vec<String> = stderr(&output).lines().map(String::from).collect();
    assert_eq!(
        lines,
        [
            "rules/notify.yaml:7:3: rule \"notify\": email::send needs `email` in `allow:`",
            "scripts/mail.rhai:2:5: rule \"notify\": email::send needs `email` in `allow:` (reached through mail::tell)",
            "2 errors found",
        ]
    );
}

#[test]
fn init_writes_a_project_that_checks_and_tests_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let output = zoomwire_in(dir.path(), &["init", "mine"], &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let written = stdout(&output);
    for file in [
        "mine/zoomwire.yaml",
        "mine/.env.example",
        "mine/rules/recording-to-slack.yaml",
        "mine/scripts/zoomfmt.rhai",
        "mine/examples/events/recording.completed.json",
    ] {
        assert!(written.contains(&format!("wrote {file}")), "{written}");
        assert!(dir.path().join(file).is_file(), "{file}");
    }
    assert!(
        written.contains("cd mine && zoomwire check && zoomwire test"),
        "{written}"
    );

    let project = dir.path().join("mine");
    let check = zoomwire_in(&project, &["check"], &[]);
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));
    assert!(
        stdout(&check).starts_with("ok: 3 rules"),
        "{}",
        stdout(&check)
    );
    assert!(stderr(&check).is_empty(), "no warning: {}", stderr(&check));
    let test = zoomwire_in(&project, &["test"], &[]);
    assert_eq!(test.status.code(), Some(0), "{}", stdout(&test));
    assert!(
        stdout(&test).trim_end().ends_with("8 passed, 0 failed"),
        "{}",
        stdout(&test)
    );

    // Again: refused, and the file changed meanwhile is kept.
    let settings = project.join("zoomwire.yaml");
    std::fs::write(&settings, "vars: { mine: true }\n").unwrap();
    let again = zoomwire_in(dir.path(), &["init", "mine"], &[]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        stderr(&again).contains("mine/zoomwire.yaml"),
        "{}",
        stderr(&again)
    );
    assert!(
        stderr(&again).contains("nothing was written"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        std::fs::read_to_string(&settings).unwrap(),
        "vars: { mine: true }\n"
    );
}

#[test]
fn schema_config_describes_every_key_of_the_example_settings() {
    let output = zoomwire(&["schema", "--config"]);
    assert_eq!(output.status.code(), Some(0));
    let schema: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(schema["additionalProperties"], false);
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("zoomwire.example.yaml"),
    )
    .unwrap();
    let top_keys: Vec<&str> = example
        .lines()
        .filter(|line| line.chars().next().is_some_and(|c| c.is_ascii_lowercase()))
        .filter_map(|line| line.split_once(':').map(|(key, _)| key))
        .collect();
    assert!(top_keys.len() > 10, "{top_keys:?}");
    for key in top_keys {
        assert!(
            schema["properties"][key].is_object(),
            "`{key}` of zoomwire.example.yaml is in the schema"
        );
    }
    let text = schema.to_string();
    assert!(text.contains("max_operations"), "the sandbox's limits");
    assert!(text.contains("ZOOMWIRE_RULES"), "the variables are named");
}

#[test]
fn bash_completes_the_verbs_and_flags() {
    let script = zoomwire(&["completions", "bash"]);
    assert_eq!(script.status.code(), Some(0));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("zoomwire.bash");
    std::fs::write(&file, &script.stdout).unwrap();
    // What bash offers after `zoomwire in<TAB>` and `zoomwire check --ru<TAB>`.
    let complete = |words: &str| {
        let program = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); _zoomwire zoomwire \"${{COMP_WORDS[-1]}}\" \"${{COMP_WORDS[-2]}}\"; echo \"${{COMPREPLY[@]}}\"",
            file.display()
        );
        let output = Command::new("bash")
            .args(["-c", &program])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        stdout(&output).trim().to_string()
    };
    assert_eq!(complete("zoomwire in"), "init");
    assert_eq!(complete("zoomwire check --ru"), "--rules");
    assert_eq!(complete("zoomwire compl"), "completions");

    for shell in ["zsh", "fish"] {
        let output = zoomwire(&["completions", shell]);
        assert_eq!(output.status.code(), Some(0));
        let text = stdout(&output);
        assert!(
            text.contains("completions") && text.contains("rules"),
            "{shell}"
        );
    }
    let unknown = zoomwire(&["completions", "tcsh"]);
    assert_eq!(unknown.status.code(), Some(2));
}

/// The usage column of the README's table of commands.
fn readme_usages() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let table = readme
        .split("## Commands")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").nth(1))
        .expect("the commands table");
    table
        .lines()
        .filter_map(|row| row.strip_prefix("| `"))
        .flat_map(|cell| {
            let usage = cell.split(" |").next().unwrap_or_default();
            // `zoomwire runs ...`, `zoomwire runs retry ID`: both usages.
            usage
                .split("`, `")
                .map(|one| one.trim_matches('`').replace("\\|", "|"))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_readmes_usage_lines_are_what_the_binary_accepts() {
    let usages = readme_usages();
    assert!(usages.len() >= 14, "{usages:#?}");
    for usage in &usages {
        let words: Vec<&str> = usage.split_whitespace().collect();
        assert_eq!(words[0], "zoomwire", "{usage}");
        let verbs: Vec<&str> = words[1..]
            .iter()
            .take_while(|w| w.chars().all(|c| c.is_ascii_lowercase()))
            .copied()
            .collect();
        let mut help_args = verbs.clone();
        help_args.push("--help");
        let help = zoomwire(&help_args);
        assert_eq!(help.status.code(), Some(0), "`{usage}`: {}", stderr(&help));
        let help = stdout(&help);
        for flag in words
            .iter()
            .flat_map(|w| w.split(['[', ']', '|', '(', ')']))
        {
            if flag.starts_with("--") {
                assert!(help.contains(flag), "`{usage}`: {flag} is not in:\n{help}");
            }
        }
    }
    // `fire` without `--dry-run` is refused, as the README says.
    let bare = zoomwire(&["fire", "examples/events/recording.completed.json"]);
    assert_eq!(bare.status.code(), Some(2));
    assert!(stderr(&bare).contains("add --dry-run"), "{}", stderr(&bare));
}
