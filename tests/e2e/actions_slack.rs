//! `slack.*` end to end against the simulator's Slack: posting with the bot
//! token, Slack's `ok:false` codes, the 429 `Retry-After` seconds form
//! delivering exactly once, deadlines, 5xx handling and named webhooks.
//! The tests that wait out a 429 run on tokio's paused clock (the
//! simulator on the same runtime, real HTTP over loopback) and measure on
//! it (`tokio::time::Instant`).

use std::time::Duration;

use crate::support::{context, live, live_config, oauth, perform, start_sim};
use secrecy::SecretString;
use serde_json::json;
use tokio::time::Instant;
use zoomwire_engine::effects::EffectErrorKind;
use zoomwire_engine::effects::live::LiveEffects;
use zoomwire_sim::sim::{Fault, SimHandle};

struct Setup {
    sim: SimHandle,
    effects: LiveEffects,
    _archive: tempfile::TempDir,
}

async fn setup_with(tweak: impl FnOnce(&mut zoomwire_engine::effects::live::LiveConfig)) -> Setup {
    let sim = start_sim().await;
    let archive = tempfile::tempdir().unwrap();
    let mut config = live_config(&sim, archive.path());
    tweak(&mut config);
    let effects = live(config, oauth(&sim));
    Setup {
        sim,
        effects,
        _archive: archive,
    }
}

async fn setup() -> Setup {
    setup_with(|_| {}).await
}

fn slack_statuses(sim: &SimHandle, prefix: &str) -> Vec<u16> {
    sim.requests()
        .into_iter()
        .filter(|r| r.raw_path.starts_with(prefix))
        .map(|r| r.status)
        .collect()
}

#[tokio::test]
async fn posts_with_the_bot_token_and_answers_the_ts() {
    let s = setup().await;
    let answer = perform(
        &s.effects,
        &context(Duration::from_secs(5)),
        "slack.post",
        json!({"channel": "#recordings", "text": "Recording ready",
               "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "*ready*"}}],
               "thread_ts": "1700000000.000100"}),
    )
    .await
    .unwrap();
    assert_eq!(answer["ok"], true);
    let posts = s.sim.slack_posts();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].via, "chat.postMessage");
    assert_eq!(posts[0].text.as_deref(), Some("Recording ready"));
    assert_eq!(posts[0].body["thread_ts"], "1700000000.000100");
    assert_eq!(posts[0].body["blocks"][0]["type"], "section");
    assert_eq!(answer["ts"], json!(posts[0].ts));
    let request = s.sim.requests().pop().unwrap();
    assert!(
        request.auth.as_deref().unwrap_or("").starts_with("bearer"),
        "{:?}",
        request.auth
    );
}

#[tokio::test]
async fn ok_false_becomes_an_error_with_slacks_code() {
    let s = setup().await;
    let error = perform(
        &s.effects,
        &context(Duration::from_secs(5)),
        "slack.post",
        json!({"channel": "#no-such-channel", "text": "hi"}),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Permanent);
    assert_eq!(error.code, Some(json!("channel_not_found")));
    assert_eq!(error.message, "slack answered `channel_not_found`");
}

#[tokio::test]
async fn a_wrong_bot_token_is_invalid_auth() {
    let s = setup_with(|config| {
        config.slack_bot_token = Some(SecretString::from("xoxb-wrong".to_string()));
    })
    .await;
    let error = perform(
        &s.effects,
        &context(Duration::from_secs(5)),
        "slack.post",
        json!({"channel": "#general", "text": "hi"}),
    )
    .await
    .unwrap_err();
    assert_eq!(error.code, Some(json!("invalid_auth")));
    assert!(!error.message.contains("xoxb"), "{}", error.message);
}

#[tokio::test(start_paused = true)]
async fn waits_out_retry_after_seconds_and_posts_exactly_once() {
    let s = setup().await;
    s.sim
        .inject_fault(Fault::slack_rate_limit("/slack/api/chat.postMessage", 1, 1));
    let started = Instant::now();
    perform(
        &s.effects,
        &context(Duration::from_secs(10)),
        "slack.post",
        json!({"channel": "#ops", "text": "once"}),
    )
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(950), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(s.sim.slack_posts().len(), 1);
    assert_eq!(
        slack_statuses(&s.sim, "/slack/api/chat.postMessage"),
        [429, 200]
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_past_the_deadline_fails_at_once() {
    let s = setup().await;
    s.sim.inject_fault(Fault::slack_rate_limit(
        "/slack/api/chat.postMessage",
        1,
        30,
    ));
    let started = Instant::now();
    let error = perform(
        &s.effects,
        &context(Duration::from_secs(3)),
        "slack.post",
        json!({"channel": "#ops", "text": "later"}),
    )
    .await
    .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(error.kind, EffectErrorKind::Transient);
    assert_eq!(error.code, Some(json!("ratelimited")));
    assert!(error.message.contains("deadline"), "{}", error.message);
    assert!(s.sim.slack_posts().is_empty());
}

#[tokio::test]
async fn retries_a_503_but_not_an_ambiguous_500() {
    let s = setup().await;
    s.sim
        .inject_fault(Fault::status("/slack/api/chat.postMessage", 1, 503));
    perform(
        &s.effects,
        &context(Duration::from_secs(5)),
        "slack.post",
        json!({"channel": "#ops", "text": "after 503"}),
    )
    .await
    .unwrap();
    assert_eq!(s.sim.slack_posts().len(), 1);

    s.sim
        .inject_fault(Fault::status("/slack/api/chat.postMessage", 1, 500));
    let error = perform(
        &s.effects,
        &context(Duration::from_secs(5)),
        "slack.post",
        json!({"channel": "#ops", "text": "after 500"}),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Transient);
    assert_eq!(error.status, Some(500));
    assert_eq!(
        slack_statuses(&s.sim, "/slack/api/chat.postMessage"),
        [503, 200, 500]
    );
}

#[tokio::test]
async fn posts_through_named_webhooks() {
    let s = setup().await;
    let ctx = context(Duration::from_secs(5));
    let answer = perform(
        &s.effects,
        &ctx,
        "slack.webhook",
        json!({"name": "default", "text": "via default"}),
    )
    .await
    .unwrap();
    assert_eq!(answer, json!({"ok": true}));
    perform(
        &s.effects,
        &ctx,
        "slack.webhook",
        json!({"name": "ops", "payload": {"text": "rich", "blocks": [{"type": "divider"}]}}),
    )
    .await
    .unwrap();
    let posts = s.sim.slack_posts();
    assert_eq!(posts[0].via, "webhook:default");
    assert_eq!(posts[0].text.as_deref(), Some("via default"));
    assert_eq!(posts[1].via, "webhook:ops");
    assert_eq!(posts[1].body["blocks"][0]["type"], "divider");
}

#[tokio::test(start_paused = true)]
async fn webhook_errors_and_rate_limits() {
    let s = setup().await;
    let ctx = context(Duration::from_secs(10));
    let error = perform(
        &s.effects,
        &ctx,
        "slack.webhook",
        json!({"name": "marketing", "text": "x"}),
    )
    .await
    .unwrap_err();
    assert_eq!(
        error.message,
        "no slack webhook named `marketing` (configured: default, ops); `default` comes from SLACK_WEBHOOK_URL"
    );
    let error = perform(
        &s.effects,
        &ctx,
        "slack.webhook",
        json!({"name": "default", "payload": {"text": ""}}),
    )
    .await
    .unwrap_err();
    assert_eq!(error.code, Some(json!("no_text")));
    assert_eq!(error.status, Some(400));
    assert!(
        !error.message.contains("/slack/webhook"),
        "{}",
        error.message
    );

    s.sim
        .inject_fault(Fault::slack_rate_limit("/slack/webhook/default", 1, 1));
    perform(
        &s.effects,
        &ctx,
        "slack.webhook",
        json!({"text": "after a 429"}),
    )
    .await
    .unwrap();
    assert_eq!(s.sim.slack_posts().len(), 1);
    assert_eq!(
        slack_statuses(&s.sim, "/slack/webhook/default"),
        [400, 429, 200]
    );
}
