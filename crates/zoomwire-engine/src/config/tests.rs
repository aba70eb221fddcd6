//! Settings tests: layering, defaults, every error at once, secrets kept out
//! of Debug output and messages. The environment is always a map here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::ExposeSecret;

use super::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sources(yaml: Option<&str>, dotenv: Option<&str>, pairs: &[(&str, &str)]) -> Sources {
    Sources {
        yaml: yaml.map(|text| SourceText {
            path: PathBuf::from("zoomwire.yaml"),
            text: text.to_string(),
        }),
        dotenv: dotenv.map(|text| SourceText {
            path: PathBuf::from(".env"),
            text: text.to_string(),
        }),
        env: env(pairs),
    }
}

fn settings(yaml: Option<&str>, dotenv: Option<&str>, pairs: &[(&str, &str)]) -> Settings {
    Settings::from_sources(&sources(yaml, dotenv, pairs)).unwrap()
}

fn error_lines(result: Result<Settings, ConfigErrors>) -> Vec<String> {
    result
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect()
}

const FULL_ENV: &[(&str, &str)] = &[
    ("ZOOM_ACCOUNT_ID", "acc-1"),
    ("ZOOM_CLIENT_ID", "client-1"),
    ("ZOOM_CLIENT_SECRET", "zoom-client-secret-value"),
    ("ZOOM_SUBSCRIPTION_ID", "sub-1"),
    ("ZOOM_WEBHOOK_SECRET_TOKEN", "webhook-secret-value"),
    ("SLACK_BOT_TOKEN", "xoxb-slack-token-value"),
    (
        "SLACK_WEBHOOK_URL",
        "https://hooks.slack.com/services/T0/B0/slack-hook-secret",
    ),
    (
        "SMTP_URL",
        "smtp://mailer:smtp-password-value@mail.example.com:587",
    ),
    ("EMAIL_FROM", "Zoomwire <zw@example.com>"),
    ("ZOOMWIRE_ADMIN_TOKEN", "admin-token-secret-value"),
];

#[test]
fn defaults_are_the_design_defaults() {
    let s = Settings::default();
    assert!(s.accounts.is_empty());
    assert_eq!(s.zoom.oauth_base, "https://zoom.us");
    assert_eq!(s.zoom.api_base, "https://api.zoom.us/v2");
    assert_eq!(s.zoom.ws_base, "wss://ws.zoom.us/ws");
    assert_eq!(s.slack.api_base, "https://slack.com/api");
    assert!(s.slack.bot_token.is_none() && s.slack.webhooks.is_empty());
    assert!(s.email.smtp_url.is_none() && s.email.from.is_none());
    assert!(!s.webhook.enabled());
    assert_eq!(s.webhook.addr.to_string(), "127.0.0.1:9798");
    assert_eq!(s.webhook.limits.max_body, 1 << 20);
    assert_eq!(s.data_dir, PathBuf::from(".zoomwire"));
    assert_eq!(s.admin_addr.to_string(), "127.0.0.1:9797");
    assert_eq!(s.rules_dir, PathBuf::from("rules"));
    assert_eq!(s.scripts_dir, PathBuf::from("scripts"));
    assert_eq!(s.log_format, LogFormat::Text);
    assert_eq!(
        s.websocket,
        WebsocketSettings {
            heartbeat: Duration::from_secs(30),
            dead_after: Duration::from_secs(75),
            max_frame: 1 << 20 | 1 << 19,
        }
    );
    assert_eq!(s.journal.dedupe_window, Duration::from_secs(3 * 86_400));
    assert_eq!(s.journal.retention, Duration::from_secs(30 * 86_400));
    assert_eq!(s.shutdown_grace, Duration::from_secs(30));
    assert_eq!(s.max_waiting_runs, 100_000);
    assert!(s.vars.is_empty());
    assert_eq!(s.sandbox, SandboxLimits::default());
    assert_eq!(s.loaded_from, LoadedFrom::default());
}

#[test]
fn environment_overrides_dotenv_which_overrides_the_file() {
    let yaml = "zoom: { api_base: 'http://yaml.test/v2' }\naccounts: [{ account_id: A, client_id: C, client_secret: from-yaml }]\n";
    let dotenv = "ZOOM_API_BASE=http://dotenv.test/v2\nZOOM_CLIENT_SECRET=from-dotenv\n";
    let all = settings(
        Some(yaml),
        Some(dotenv),
        &[
            ("ZOOM_API_BASE", "http://env.test/v2"),
            ("ZOOM_CLIENT_SECRET", "from-env"),
        ],
    );
    assert_eq!(all.zoom.api_base, "http://env.test/v2");
    assert_eq!(all.accounts[0].client_secret.expose_secret(), "from-env");

    let without_env = settings(Some(yaml), Some(dotenv), &[]);
    assert_eq!(without_env.zoom.api_base, "http://dotenv.test/v2");
    assert_eq!(
        without_env.accounts[0].client_secret.expose_secret(),
        "from-dotenv"
    );

    let file_only = settings(Some(yaml), None, &[]);
    assert_eq!(file_only.zoom.api_base, "http://yaml.test/v2");
    assert_eq!(
        file_only.accounts[0].client_secret.expose_secret(),
        "from-yaml"
    );
    assert_eq!(file_only.accounts[0].name, DEFAULT_ACCOUNT);
}

#[test]
fn a_blank_variable_counts_as_unset() {
    let s = settings(
        Some("admin_addr: 127.0.0.1:7000\n"),
        Some("ZOOMWIRE_ADMIN_ADDR=\n"),
        &[("ZOOMWIRE_ADMIN_ADDR", "  ")],
    );
    assert_eq!(s.admin_addr.to_string(), "127.0.0.1:7000");
}

#[test]
fn reads_every_setting_from_the_environment() {
    let mut pairs = FULL_ENV.to_vec();
    pairs.extend([
        ("ZOOM_OAUTH_BASE", "http://127.0.0.1:1/"),
        ("ZOOM_WS_BASE", "ws://127.0.0.1:1/ws"),
        ("SLACK_API_BASE", "http://127.0.0.1:1/api"),
        ("ZOOMWIRE_DATA", "/var/lib/zoomwire"),
        ("ZOOMWIRE_ADMIN_ADDR", "0.0.0.0:9000"),
        ("ZOOMWIRE_RULES", "r"),
        ("ZOOMWIRE_SCRIPTS", "s"),
        ("ZOOMWIRE_LOG_FORMAT", "json"),
        ("ZOOMWIRE_WEBHOOK_ADDR", "127.0.0.1:0"),
        ("ZOOMWIRE_WEBHOOK_MAX_BODY", "64KiB"),
        ("ZOOMWIRE_WS_HEARTBEAT", "200ms"),
        ("ZOOMWIRE_WS_DEAD_AFTER", "1s"),
        ("ZOOMWIRE_WS_MAX_FRAME", "2MiB"),
        ("ZOOMWIRE_DEDUPE_WINDOW", "1h"),
        ("ZOOMWIRE_RETENTION", "7d"),
        ("ZOOMWIRE_SHUTDOWN_GRACE", "0s"),
        ("ZOOMWIRE_MAX_WAITING_RUNS", "5_000"),
    ]);
    let s = settings(None, None, &pairs);
    let account = s.account(DEFAULT_ACCOUNT).unwrap();
    assert_eq!(account.account_id, "acc-1");
    assert_eq!(account.client_id, "client-1");
    assert_eq!(account.subscription_id.as_deref(), Some("sub-1"));
    assert!(s.webhook.enabled());
    assert_eq!(s.webhook.limits.max_body, 64 << 10);
    assert_eq!(s.zoom.ws_base, "ws://127.0.0.1:1/ws");
    assert_eq!(s.zoom.oauth_base, "http://127.0.0.1:1", "no trailing slash");
    assert_eq!(s.slack.webhooks.keys().collect::<Vec<_>>(), vec!["default"]);
    assert_eq!(s.email.from.as_deref(), Some("Zoomwire <zw@example.com>"));
    assert_eq!(s.data_dir, PathBuf::from("/var/lib/zoomwire"));
    assert_eq!(s.admin_addr.port(), 9000);
    assert_eq!(s.log_format, LogFormat::Json);
    assert_eq!(s.websocket.heartbeat, Duration::from_millis(200));
    assert_eq!(s.websocket.dead_after, Duration::from_secs(1));
    assert_eq!(s.websocket.max_frame, 2 << 20);
    assert_eq!(s.journal.retention, Duration::from_secs(7 * 86_400));
    assert_eq!(s.shutdown_grace, Duration::ZERO);
    assert_eq!(s.max_waiting_runs, 5_000);
    assert!(s.require_daemon().is_ok());
}

#[test]
fn reads_several_accounts_webhooks_vars_and_sandbox_from_the_file() {
    let yaml = r##"
accounts:
  - name: sales
    account_id: A2
    client_id: C2
    client_secret: S2
    subscription_id: X2
  - { name: support, account_id: A3, client_id: C3, client_secret: S3, subscription_id: X3 }
slack_webhooks:
  ops: https://hooks.slack.com/services/T/B/ops
  default: https://hooks.slack.com/services/T/B/yaml-default
websocket: { max_frame: 4096 }
vars: { archive_channel: "#recordings", retries: 3 }
sandbox: { max_operations: 1000, condition_timeout: 20ms }
"##;
    let s = settings(Some(yaml), None, FULL_ENV);
    let names: Vec<&str> = s.accounts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, vec!["default", "sales", "support"]);
    assert_eq!(
        s.account("sales").unwrap().client_secret.expose_secret(),
        "S2"
    );
    assert_eq!(
        s.slack.webhooks.keys().collect::<Vec<_>>(),
        vec!["default", "ops"]
    );
    // SLACK_WEBHOOK_URL overrides the file's `default`.
    assert!(
        s.slack.webhooks["default"]
            .expose_secret()
            .ends_with("slack-hook-secret")
    );
    assert_eq!(s.websocket.max_frame, 4096);
    assert_eq!(s.vars["archive_channel"], "#recordings");
    assert_eq!(s.vars["retries"], 3);
    assert_eq!(
        s.sandbox,
        SandboxLimits {
            max_operations: 1000,
            condition_timeout: Duration::from_millis(20),
            ..SandboxLimits::default()
        }
    );
    assert_eq!(
        s.loaded_from.config_file,
        Some(PathBuf::from("zoomwire.yaml"))
    );
}

#[test]
fn reports_every_problem_at_once() {
    let yaml = "admin_addr: localhost\naccounts:\n  - { name: sales, account_id: A2 }\n  - { name: sales, account_id: A3 }\nwebsocket: { heartbeat: 30s, dead_after: 10s }\n";
    let dotenv = "ZOOM_WS_BASE=https://ws.zoom.us/ws\nnot a line\n";
    let pairs = [
        ("ZOOM_CLIENT_ID", "client-1"),
        ("SMTP_URL", "smtp://u:p@mail.example.com"),
        ("ZOOMWIRE_LOG_FORMAT", "xml"),
        ("ZOOMWIRE_RETENTION", "1h"),
    ];
    let lines = error_lines(Settings::from_sources(&sources(
        Some(yaml),
        Some(dotenv),
        &pairs,
    )));
    assert_eq!(
        lines,
        vec![
            ".env:2: expected KEY=value",
            "accounts[1].name: another account is already named `sales` (from zoomwire.yaml)",
            "ZOOM_ACCOUNT_ID / accounts[default].account_id: missing",
            "ZOOM_CLIENT_SECRET / accounts[default].client_secret: missing",
            "accounts[sales].client_id: missing",
            "accounts[sales].client_secret: missing",
            "ZOOM_WS_BASE / zoom.ws_base: URL scheme `https` is not supported, expected `ws` or `wss` (from .env line 1)",
            "EMAIL_FROM / email.from: missing: needed to send email through SMTP_URL",
            "ZOOMWIRE_ADMIN_ADDR / admin_addr: `localhost` is not an address, expected an IP address and a port such as 127.0.0.1:9797 (from zoomwire.yaml)",
            "ZOOMWIRE_LOG_FORMAT / log_format: unknown log format `xml`, expected `text` or `json` (from the environment)",
            "ZOOMWIRE_WS_DEAD_AFTER / websocket.dead_after: 10s must be longer than the heartbeat interval (30s), or every quiet connection counts as dead (from zoomwire.yaml)",
            "ZOOMWIRE_RETENTION / journal.retention: must be at least the dedupe window, or duplicates of pruned events would run again (from the environment)",
        ]
    );
}

#[test]
fn the_whole_message_lists_each_problem_on_its_own_line() {
    let error = Settings::from_sources(&sources(
        None,
        None,
        &[("ZOOMWIRE_DATA", "x"), ("ZOOM_API_BASE", "nope")],
    ))
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid configuration:\n  ZOOM_API_BASE / zoom.api_base: `nope` is not a URL: relative URL without a base (from the environment)"
    );
}

#[test]
fn file_errors_name_the_position() {
    let lines = error_lines(Settings::from_sources(&sources(
        Some("zoom:\n  api_bse: x\n"),
        None,
        &[],
    )));
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].starts_with("zoomwire.yaml:2:3: unknown field `api_bse`"),
        "{}",
        lines[0]
    );
    let lines = error_lines(Settings::from_sources(&sources(
        Some("websocket: { heartbeat: [1] }\n"),
        None,
        &[],
    )));
    assert!(lines[0].starts_with("zoomwire.yaml:1:"), "{}", lines[0]);
    let lines = error_lines(Settings::from_sources(&sources(
        Some("sandbox: 3\nwebsocket: { heartbeat: 30 }\n"),
        None,
        &[],
    )));
    assert_eq!(
        lines,
        vec![
            "ZOOMWIRE_WS_HEARTBEAT / websocket.heartbeat: invalid duration `30`, expected a number and a unit such as 500ms, 30s, 5m, 2h, 1d (from zoomwire.yaml)",
            "sandbox: expected a mapping of limits (from zoomwire.yaml)",
        ]
    );
}

#[test]
fn every_bad_sandbox_limit_joins_the_report() {
    let yaml = "sandbox:\n  max_ops: 10\n  condition_timeout: soon\n  max_modules: 4\n";
    let lines = error_lines(Settings::from_sources(&sources(
        Some(yaml),
        None,
        &[("ZOOMWIRE_WS_HEARTBEAT", "often")],
    )));
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines[0].starts_with("ZOOMWIRE_WS_HEARTBEAT / websocket.heartbeat: invalid duration"),
        "{}",
        lines[0]
    );
    // The limits are read in the order of their names.
    assert!(
        lines[1].starts_with("sandbox.condition_timeout: invalid duration `soon`"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with(
            "sandbox.max_ops: unknown limit `max_ops`, expected one of: max_operations, max_call_levels,"
        ),
        "{}",
        lines[2]
    );
    assert!(lines[2].ends_with("(from zoomwire.yaml)"), "{}", lines[2]);
    let valid = settings(
        Some("sandbox: { max_modules: 4, stack_size: 32MiB }\n"),
        None,
        &[],
    );
    assert_eq!(valid.sandbox.max_modules, 4);
    assert_eq!(valid.sandbox.stack_size, 32 * 1024 * 1024);
}

#[test]
fn an_empty_file_is_an_empty_configuration() {
    let s = settings(Some("# nothing yet\n"), Some(""), &[]);
    assert!(s.accounts.is_empty());
}

#[test]
fn the_daemon_needs_an_account_and_its_subscription() {
    let lines: Vec<String> = Settings::default()
        .require_daemon()
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        lines,
        vec![
            "ZOOM_ACCOUNT_ID / accounts[default].account_id: missing: `zoomwire run` needs at least one Zoom account",
            "ZOOM_CLIENT_ID / accounts[default].client_id: missing: `zoomwire run` needs at least one Zoom account",
            "ZOOM_CLIENT_SECRET / accounts[default].client_secret: missing: `zoomwire run` needs at least one Zoom account",
            "ZOOM_SUBSCRIPTION_ID / accounts[default].subscription_id: missing: `zoomwire run` needs at least one Zoom account",
        ]
    );

    let yaml = "accounts: [{ name: sales, account_id: A, client_id: C, client_secret: S }]\n";
    let no_subscription = settings(Some(yaml), None, &[]);
    let lines: Vec<String> = no_subscription
        .require_daemon()
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].starts_with(
            "accounts[sales].subscription_id: missing: `zoomwire run` receives events"
        )
    );

    // With the webhook, events need no subscription.
    let with_webhook = settings(Some(yaml), None, &[("ZOOM_WEBHOOK_SECRET_TOKEN", "t")]);
    assert!(with_webhook.require_daemon().is_ok());
}

#[test]
fn load_reads_files_and_reports_daemon_needs_in_the_same_list() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "ZOOM_ACCOUNT_ID=acc\nZOOM_CLIENT_ID=cid\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("zoomwire.yaml"), "rules: my-rules\n").unwrap();
    let options = LoadOptions {
        base_dir: dir.path().to_path_buf(),
        env: env(&[("ZOOMWIRE_SCRIPTS", "my-scripts")]),
        require_daemon: true,
        ..LoadOptions::default()
    };
    let lines: Vec<String> = Settings::load(&options)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        lines,
        vec![
            "ZOOM_CLIENT_SECRET / accounts[default].client_secret: missing",
            "ZOOM_SUBSCRIPTION_ID / accounts[default].subscription_id: missing: `zoomwire run` receives events through \
             the account's WebSocket subscription (or set ZOOM_WEBHOOK_SECRET_TOKEN to receive them by webhook)",
        ]
    );

    let options = LoadOptions {
        require_daemon: false,
        env: env(&[
            ("ZOOMWIRE_SCRIPTS", "my-scripts"),
            ("ZOOM_CLIENT_SECRET", "s"),
        ]),
        ..options
    };
    let s = Settings::load(&options).unwrap();
    assert_eq!(s.rules_dir, PathBuf::from("my-rules"));
    assert_eq!(s.scripts_dir, PathBuf::from("my-scripts"));
    assert_eq!(s.loaded_from.dotenv_file, Some(dir.path().join(".env")));
    assert_eq!(
        s.loaded_from.config_file,
        Some(dir.path().join("zoomwire.yaml"))
    );
}

#[test]
fn a_named_config_file_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let options = LoadOptions {
        base_dir: dir.path().to_path_buf(),
        env: env(&[(CONFIG_PATH_VAR, "/nonexistent/zoomwire.yaml")]),
        ..LoadOptions::default()
    };
    let lines: Vec<String> = Settings::load(&options)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].starts_with("/nonexistent/zoomwire.yaml: cannot read the file"),
        "{}",
        lines[0]
    );
    // Without a name, missing files are fine.
    let options = LoadOptions {
        env: BTreeMap::new(),
        ..options
    };
    assert!(Settings::load(&options).is_ok());
}

#[test]
fn secrets_stay_out_of_debug_output_and_errors() {
    let mut pairs = FULL_ENV.to_vec();
    let s = settings(
        Some("slack_webhooks: { ops: 'https://hooks.slack.com/services/T/B/ops-hook-secret' }\n"),
        None,
        &pairs,
    );
    let shown = format!("{s:?} {:#?}", s);
    for secret in [
        "zoom-client-secret-value",
        "webhook-secret-value",
        "xoxb-slack-token-value",
        "slack-hook-secret",
        "ops-hook-secret",
        "smtp-password-value",
        "mailer",
        "admin-token-secret-value",
    ] {
        assert!(!shown.contains(secret), "{secret} shown in {shown}");
    }
    assert!(
        shown.contains("smtp://mail.example.com:587/[redacted]"),
        "{shown}"
    );
    assert!(
        shown.contains("client-1"),
        "identifiers stay visible: {shown}"
    );

    // Invalid secret values are not repeated either.
    pairs.retain(|(k, _)| *k != "SMTP_URL" && *k != "SLACK_WEBHOOK_URL");
    pairs.push(("SMTP_URL", "mail.example.com:smtp-password-value"));
    pairs.push((
        "SLACK_WEBHOOK_URL",
        "ftp://hooks.slack.com/slack-hook-secret",
    ));
    let error =
        Settings::from_sources(&sources(None, Some("BROKEN smtp-password-value\n"), &pairs))
            .unwrap_err();
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains("smtp-password-value"), "{shown}");
    assert!(!shown.contains("slack-hook-secret"), "{shown}");
    assert_eq!(error.0.len(), 3, "{shown}");
}

#[test]
fn builds_the_runtime_configurations() {
    let yaml = "accounts: [{ name: rest-only, account_id: A, client_id: C, client_secret: S }]\n";
    let mut pairs = FULL_ENV.to_vec();
    pairs.extend([
        ("ZOOM_OAUTH_BASE", "http://127.0.0.1:7000/"),
        ("ZOOM_WS_BASE", "ws://127.0.0.1:7000/ws"),
        ("ZOOMWIRE_WS_HEARTBEAT", "100ms"),
        ("ZOOMWIRE_WS_DEAD_AFTER", "300ms"),
        ("ZOOMWIRE_WS_MAX_FRAME", "64KiB"),
        ("ZOOMWIRE_DEDUPE_WINDOW", "1h"),
        ("ZOOMWIRE_RETENTION", "2d"),
    ]);
    let s = settings(Some(yaml), None, &pairs);
    let account = s.account(DEFAULT_ACCOUNT).unwrap();
    let oauth = s.oauth_config(account);
    assert_eq!(oauth.oauth_base, "http://127.0.0.1:7000");
    assert_eq!(
        (oauth.account_id.as_str(), oauth.client_id.as_str()),
        ("acc-1", "client-1")
    );
    assert_eq!(
        oauth.client_secret.expose_secret(),
        "zoom-client-secret-value"
    );
    let ws = s.websocket_config(account).unwrap();
    assert_eq!(ws.ws_base, "ws://127.0.0.1:7000/ws");
    assert_eq!(
        (ws.subscription_id.as_str(), ws.name.as_str()),
        ("sub-1", "default")
    );
    assert_eq!(ws.heartbeat_interval, Duration::from_millis(100));
    assert_eq!(ws.dead_after, Duration::from_millis(300));
    assert_eq!(ws.max_frame_bytes, 64 << 10);
    assert!(
        s.websocket_config(s.account("rest-only").unwrap())
            .is_none()
    );
    let live = s.live_config();
    assert_eq!(live.zoom_api_base.as_str(), "https://api.zoom.us/v2");
    assert_eq!(live.slack_api_base.as_str(), "https://slack.com/api");
    assert_eq!(
        live.slack_webhooks.keys().collect::<Vec<_>>(),
        vec!["default"]
    );
    assert!(live.slack_bot_token.is_some() && live.smtp_url.is_some());
    assert_eq!(
        live.email_from.as_deref(),
        Some("Zoomwire <zw@example.com>")
    );
    assert_eq!(live.archive_dir, PathBuf::from(".zoomwire/archive"));
    let journal = s.journal_options();
    assert_eq!(journal.dedupe_window, Duration::from_secs(3600));
    assert_eq!(journal.max_age, Duration::from_secs(2 * 86_400));
}

#[test]
fn the_example_file_loads_and_shows_the_defaults() {
    let example = include_str!("../../../../zoomwire.example.yaml");
    let s = settings(Some(example), None, &[]);
    let defaults = Settings::default();
    assert_eq!(s.zoom.api_base, defaults.zoom.api_base);
    assert_eq!(s.zoom.oauth_base, defaults.zoom.oauth_base);
    assert_eq!(s.zoom.ws_base, defaults.zoom.ws_base);
    assert_eq!(s.slack.api_base, defaults.slack.api_base);
    assert_eq!(s.webhook.addr, defaults.webhook.addr);
    assert_eq!(s.webhook.limits.max_body, defaults.webhook.limits.max_body);
    assert_eq!(s.admin_addr, defaults.admin_addr);
    assert_eq!(
        (&s.data_dir, &s.rules_dir, &s.scripts_dir),
        (
            &defaults.data_dir,
            &defaults.rules_dir,
            &defaults.scripts_dir
        )
    );
    assert_eq!(s.websocket, defaults.websocket);
    assert_eq!(s.journal, defaults.journal);
    assert_eq!(s.effects, defaults.effects);
    assert_eq!(s.shutdown_grace, defaults.shutdown_grace);
    assert_eq!(s.log_format, defaults.log_format);
    assert_eq!(s.accounts[0].name, "sales");
    assert!(s.webhook.enabled());
    assert_eq!(s.slack.webhooks.keys().collect::<Vec<_>>(), vec!["ops"]);
    assert_eq!(s.vars["archive_channel"], "#recordings");
    assert_eq!(s.sandbox, SandboxLimits::default());
}

#[test]
fn the_journal_syncs_every_commit_unless_normal_is_asked_for() {
    use crate::journal::JournalSync;
    let s = settings(None, None, &[]);
    assert_eq!(s.journal.sync, JournalSync::Full);
    assert_eq!(s.journal_options().sync, JournalSync::Full);
    let s = settings(None, None, &[("ZOOMWIRE_JOURNAL_SYNC", "normal")]);
    assert_eq!(s.journal_options().sync, JournalSync::Normal);
    let s = settings(Some("journal: { sync: NORMAL }"), None, &[]);
    assert_eq!(s.journal.sync, JournalSync::Normal);
    let lines = error_lines(Settings::from_sources(&sources(
        None,
        None,
        &[("ZOOMWIRE_JOURNAL_SYNC", "off")],
    )));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("ZOOMWIRE_JOURNAL_SYNC"), "{lines:?}");
    assert!(
        lines[0].contains("expected `full` or `normal`"),
        "{lines:?}"
    );
}

#[test]
fn the_journal_store_is_sqlite_unless_memory_is_asked_for() {
    use crate::journal::JournalMode;
    assert_eq!(settings(None, None, &[]).journal.store, JournalMode::Sqlite);
    let s = settings(None, None, &[("ZOOMWIRE_JOURNAL", "Memory")]);
    assert_eq!(s.journal.store, JournalMode::Memory);
    let s = settings(Some("journal: { store: memory }"), None, &[]);
    assert_eq!(s.journal.store, JournalMode::Memory);
    let lines = error_lines(Settings::from_sources(&sources(
        None,
        None,
        &[("ZOOMWIRE_JOURNAL", "redis")],
    )));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("ZOOMWIRE_JOURNAL"), "{lines:?}");
    assert!(
        lines[0].contains("expected `sqlite`, `postgres` or `memory`"),
        "{lines:?}"
    );
}

#[test]
fn the_postgres_journal_needs_a_database_url_which_is_never_shown() {
    use crate::journal::JournalMode;
    let lines = error_lines(Settings::from_sources(&sources(
        None,
        None,
        &[("ZOOMWIRE_JOURNAL", "postgres")],
    )));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("ZOOMWIRE_DATABASE_URL"), "{lines:?}");
    assert!(lines[0].contains("missing"), "{lines:?}");
    let s = settings(
        Some("journal: { store: postgres, node_id: node-a, lease_ttl: 5s }"),
        None,
        &[(
            "ZOOMWIRE_DATABASE_URL",
            "postgres://zoom:pw-secret@db:5432/zoomwire",
        )],
    );
    assert_eq!(s.journal.store, JournalMode::Postgres);
    assert_eq!(s.journal.node_id.as_deref(), Some("node-a"));
    assert_eq!(s.journal.lease_ttl, Duration::from_secs(5));
    let database = s.journal.database.as_ref().unwrap();
    assert_eq!(database.shown(), "db:5432/zoomwire");
    assert!(
        !format!("{s:?}").contains("pw-secret"),
        "settings never show it"
    );
    let lines = error_lines(Settings::from_sources(&sources(
        None,
        None,
        &[
            ("ZOOMWIRE_JOURNAL", "postgres"),
            (
                "ZOOMWIRE_DATABASE_URL",
                "mysql://zoom:pw-secret@db/zoomwire",
            ),
            ("ZOOMWIRE_NODE_ID", "node a"),
            ("ZOOMWIRE_LEASE_TTL", "1s"),
        ],
    )));
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines.iter().all(|l| !l.contains("pw-secret")), "{lines:?}");
    assert!(
        lines[0].contains("ZOOMWIRE_DATABASE_URL") && lines[0].contains("`mysql`"),
        "{lines:?}"
    );
    assert!(lines[1].contains("ZOOMWIRE_NODE_ID"), "{lines:?}");
    assert!(
        lines[2].contains("ZOOMWIRE_LEASE_TTL") && lines[2].contains("at least 2s"),
        "{lines:?}"
    );
}

#[test]
fn the_admin_server_beyond_loopback_needs_a_token_which_never_shows() {
    let lines = error_lines(Settings::from_sources(&sources(
        Some("admin_addr: 0.0.0.0:9797\n"),
        None,
        &[],
    )));
    assert_eq!(
        lines,
        vec![
            "ZOOMWIRE_ADMIN_ADDR / admin_addr: `0.0.0.0:9797` is beyond loopback and ZOOMWIRE_ADMIN_TOKEN is not set: set a token, or bind a loopback address such as 127.0.0.1:9797 (from zoomwire.yaml)"
        ]
    );
    let token = "admin-token-of-some-length";
    let s = settings(
        None,
        None,
        &[
            ("ZOOMWIRE_ADMIN_ADDR", "0.0.0.0:9797"),
            ("ZOOMWIRE_ADMIN_TOKEN", token),
        ],
    );
    let options = s.admin_options();
    assert!(options.token.as_ref().unwrap().matches(token));
    assert!(!format!("{s:?}").contains(token), "Debug is redacted");
    assert!(settings(None, None, &[]).admin_token.is_none());

    let short = "short-token";
    let lines = error_lines(Settings::from_sources(&sources(
        None,
        None,
        &[("ZOOMWIRE_ADMIN_TOKEN", short)],
    )));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("ZOOMWIRE_ADMIN_TOKEN / admin_token: too short"),
        "{}",
        lines[0]
    );
    assert!(!lines[0].contains(short), "the value is never repeated");
}

#[test]
fn a_pasted_endpoint_url_gives_the_subscription_once() {
    // Pasted as the subscription id.
    let s = settings(
        None,
        None,
        &[
            ("ZOOM_ACCOUNT_ID", "acc-1"),
            ("ZOOM_CLIENT_ID", "client-1"),
            ("ZOOM_CLIENT_SECRET", "secret"),
            (
                "ZOOM_SUBSCRIPTION_ID",
                "wss://ws.zoom.us/ws?subscriptionId=pasted-sub-1",
            ),
        ],
    );
    assert_eq!(
        s.accounts[0].subscription_id.as_deref(),
        Some("pasted-sub-1")
    );
    assert_eq!(s.zoom.ws_base, "wss://ws.zoom.us/ws");

    // Pasted as the base, with no subscription id of its own.
    let options = LoadOptions {
        env: env(&[
            ("ZOOM_ACCOUNT_ID", "acc-1"),
            ("ZOOM_CLIENT_ID", "client-1"),
            ("ZOOM_CLIENT_SECRET", "secret"),
            (
                "ZOOM_WS_BASE",
                "wss://ws.zoom.us/ws?subscriptionId=pasted-sub-2",
            ),
        ]),
        base_dir: std::env::temp_dir().join("zoomwire-no-such-folder"),
        require_daemon: true,
        ..LoadOptions::default()
    };
    let s = Settings::load(&options).unwrap();
    assert_eq!(s.zoom.ws_base, "wss://ws.zoom.us/ws");
    assert_eq!(
        s.accounts[0].subscription_id.as_deref(),
        Some("pasted-sub-2")
    );
    let ws = s.websocket_config(&s.accounts[0]).unwrap();
    assert_eq!(
        (ws.ws_base.as_str(), ws.subscription_id.as_str()),
        ("wss://ws.zoom.us/ws", "pasted-sub-2")
    );

    // A URL without the parameter is a clear error.
    let errors = error_lines(Settings::from_sources(&sources(
        None,
        None,
        &[
            ("ZOOM_ACCOUNT_ID", "acc-1"),
            ("ZOOM_CLIENT_ID", "client-1"),
            ("ZOOM_CLIENT_SECRET", "secret"),
            ("ZOOM_SUBSCRIPTION_ID", "wss://ws.zoom.us/ws"),
        ],
    )));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("ZOOM_SUBSCRIPTION_ID") && e.contains("no `subscriptionId`")),
        "{errors:?}"
    );
}

#[test]
fn reconciliation_settings_and_a_lookback_no_longer_than_the_dedupe_window() {
    let s = Settings::default();
    assert!(s.reconcile.enabled);
    assert_eq!(s.reconcile.interval, Duration::from_secs(15 * 60));
    assert_eq!(s.reconcile.lookback, Duration::from_secs(48 * 3600));
    let config = s.reconcile_config();
    assert_eq!(config.max_reach, s.journal.dedupe_window);

    let s = settings(
        Some("reconcile: { enabled: false, interval: 5m, lookback: 24h }\n"),
        None,
        &[],
    );
    assert!(!s.reconcile.enabled);
    assert_eq!(s.reconcile.interval, Duration::from_secs(300));
    assert_eq!(s.reconcile.lookback, Duration::from_secs(24 * 3600));

    let errors = error_lines(Settings::from_sources(&sources(
        None,
        None,
        &[
            ("ZOOMWIRE_RECONCILE_LOOKBACK", "96h"),
            ("ZOOMWIRE_RECONCILE", "maybe"),
        ],
    )));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("ZOOMWIRE_RECONCILE_LOOKBACK")
                && e.contains("longer than the dedupe window")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("ZOOMWIRE_RECONCILE ") || e.contains("`maybe` is not a switch")),
        "{errors:?}"
    );
}

#[test]
fn effect_limits_and_the_ca_file_are_settings() {
    let s = settings(
        Some(
            "downloads: { max_size: 2GiB }\nstate: { max_keys: 50, max_value_size: 1KiB }\njournal: { warn_size: 10MiB }\n",
        ),
        None,
        &[("ZOOMWIRE_CA_FILE", "corp.pem")],
    );
    assert_eq!(s.effects.max_download, 2 << 30);
    assert_eq!(
        (s.effects.state_max_keys, s.effects.state_max_value),
        (50, 1024)
    );
    assert_eq!(s.effects.ca_file, Some(PathBuf::from("corp.pem")));
    assert_eq!(s.journal.warn_size, 10 << 20);
    let live = s.live_config();
    assert_eq!(live.limits.max_download_bytes, Some(2 << 30));
    assert_eq!(live.limits.max_state_value_bytes, 1024);
    assert_eq!(live.ca_file, Some(PathBuf::from("corp.pem")));
    let journal = s.journal_options();
    assert_eq!(journal.max_state_keys, 50);
    assert_eq!(journal.warn_size_bytes, Some(10 << 20));
}

#[test]
fn every_secret_of_the_settings_is_registered_for_redaction() {
    let s = settings(
        None,
        None,
        &[
            ("ZOOM_ACCOUNT_ID", "acc"),
            ("ZOOM_CLIENT_ID", "cid"),
            ("ZOOM_CLIENT_SECRET", "register-client-secret"),
            ("ZOOM_WEBHOOK_SECRET_TOKEN", "register-webhook-secret"),
            ("SLACK_BOT_TOKEN", "xoxb-register-bot"),
            (
                "SLACK_WEBHOOK_URL",
                "https://hooks.slack.test/services/T/B/register-hook",
            ),
            ("SMTP_URL", "smtps://u:register%20pw@mail.test"),
            ("EMAIL_FROM", "zw@example.com"),
            ("ZOOMWIRE_ADMIN_TOKEN", "register-admin-token-0123456789"),
        ],
    );
    let secrets = crate::secrets::Secrets::new();
    assert_eq!(s.register_secrets(&secrets), Vec::<String>::new());
    let text = "register-client-secret register-webhook-secret xoxb-register-bot \
                /services/T/B/register-hook register pw register-admin-token-0123456789";
    assert_eq!(
        secrets.scrub(text),
        "[redacted] [redacted] [redacted] [redacted] [redacted] [redacted]"
    );
    let short = settings(None, None, &[("ZOOM_WEBHOOK_SECRET_TOKEN", "abc")]);
    assert_eq!(
        short.register_secrets(&crate::secrets::Secrets::new()),
        vec!["ZOOM_WEBHOOK_SECRET_TOKEN".to_string()]
    );
}
