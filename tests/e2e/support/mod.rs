//! Helpers shared by the end-to-end tests: live effects pointed at the
//! simulator and effect contexts (here), the `zoomwire` binary as a daemon
//! in a scratch workspace and the one `eventually` poll ([`daemon`]), a
//! real SMTP server ([`smtp`]), a throwaway PostgreSQL server ([`postgres`]),
//! and `zoomwire bench` run to its report ([`bench`]).
// `tests/actions_download_memory.rs` includes this module too and uses only
// a few of its helpers.
#![allow(dead_code)]

pub mod daemon;
pub mod postgres;
pub mod smtp;

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde_json::Value;
use url::Url;
use zoomwire_engine::effects::accounts::ZoomAccountClient;
use zoomwire_engine::effects::live::{LiveConfig, LiveEffects, LiveLimits};
use zoomwire_engine::effects::state::MemoryState;
use zoomwire_engine::effects::{EffectContext, EffectError, EffectRequest, Effects};
use zoomwire_engine::http_retry::RetryPolicy;
use zoomwire_engine::zoom::oauth::{OAuthClient, OAuthConfig};
use zoomwire_engine::zoom::token::AccessTokens;
use zoomwire_sim::sim::{self, SimConfig, SimHandle};

pub fn install_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

pub async fn start_sim() -> SimHandle {
    install_crypto();
    sim::start(SimConfig::default()).await.expect("sim starts")
}

/// A simulator whose recording files are served over TLS (downloads send
/// their token only over https), and the folder holding its test CA
/// (`ca.pem`), which the client must trust.
pub async fn start_sim_tls() -> (SimHandle, tempfile::TempDir) {
    install_crypto();
    let certs = smtp::make_certificates();
    let tls = sim::SimTls::from_files(
        &certs.path().join("server.pem"),
        &certs.path().join("server.key"),
    )
    .expect("test certificate");
    let config = SimConfig {
        tls: Some(tls),
        ..SimConfig::default()
    };
    (sim::start(config).await.expect("sim starts"), certs)
}

/// Short backoffs so retry tests stay fast; the 429 pauses stay real.
pub fn fast_limits() -> LiveLimits {
    LiveLimits {
        retry: RetryPolicy {
            attempts: 4,
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            rate_limit_wait: Duration::from_secs(1),
            rate_limit_retries: 8,
        },
        ..LiveLimits::default()
    }
}

/// Everything pointed at the simulator; the archive in `archive`.
pub fn live_config(sim: &SimHandle, archive: &Path) -> LiveConfig {
    let mut config = LiveConfig::new(archive);
    config.archive_dir = archive.to_path_buf();
    config.zoom_api_base = Url::parse(&sim.api_base()).expect("api base");
    config.slack_api_base = Url::parse(&sim.slack_api_base()).expect("slack base");
    config.slack_bot_token = Some(SecretString::from(sim.slack_bot_token().to_string()));
    config.slack_webhooks.insert(
        "default".into(),
        SecretString::from(sim.slack_webhook_url("default")),
    );
    config.slack_webhooks.insert(
        "ops".into(),
        SecretString::from(sim.slack_webhook_url("ops")),
    );
    config.limits = fast_limits();
    config
}

/// The real OAuth client against the simulator's token endpoint.
pub fn oauth(sim: &SimHandle) -> Arc<OAuthClient> {
    let config = OAuthConfig::new(
        sim.oauth_base(),
        sim.account_id(),
        sim.client_id(),
        SecretString::from(sim.client_secret().to_string()),
    );
    Arc::new(OAuthClient::new(config).expect("oauth client"))
}

/// The live effects with one Zoom account on `tokens`.
pub fn live(config: LiveConfig, tokens: Arc<dyn AccessTokens>) -> LiveEffects {
    live_accounts(config, vec![ZoomAccountClient::only(tokens)])
}

/// The live effects with these Zoom accounts.
pub fn live_accounts(config: LiveConfig, accounts: Vec<ZoomAccountClient>) -> LiveEffects {
    LiveEffects::new(config, accounts, Arc::new(MemoryState::default())).expect("live effects")
}

pub fn context(deadline: Duration) -> EffectContext {
    EffectContext {
        rule: Arc::from("test-rule"),
        run_id: Arc::from("run-1"),
        deadline: Instant::now() + deadline,
        http_hosts: Arc::from(Vec::<String>::new()),
        download_token: None,
        zoom_account: Default::default(),
    }
}

pub fn context_with_hosts(deadline: Duration, hosts: &[&str]) -> EffectContext {
    EffectContext {
        http_hosts: hosts.iter().map(|h| h.to_string()).collect(),
        ..context(deadline)
    }
}

pub async fn perform(
    effects: &LiveEffects,
    context: &EffectContext,
    name: &str,
    args: Value,
) -> Result<Value, EffectError> {
    effects
        .perform(context, &EffectRequest::new(name, args))
        .await
}

/// Runs `zoomwire bench` with `args` (with no `RUST_LOG` and no
/// `ZOOMWIRE_DATABASE_URL` of the test's own) and returns its report and
/// its progress lines (stdout and stderr); a bench that fails (a missing or
/// doubled post among others) fails the test with both.
pub fn bench<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(args: I) -> (String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_zoomwire"))
        .arg("bench")
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("ZOOMWIRE_DATABASE_URL")
        .output()
        .expect("zoomwire runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (stdout, stderr)
}

/// For a test that needs something this machine lacks (`missing` says
/// what): fails where `CI` is set, since `.ci/run` installs it, and
/// otherwise notes that the test is skipped.
pub fn skip_unless_ci(missing: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{missing} (.ci/run installs what the tests need)"
    );
    eprintln!("skipped: {missing}");
}
