//! `zoom.*` end to end against the simulator: path templates and the
//! double-encoded UUIDs on the raw path the simulator received, pagination,
//! the 429 forms (HTTP date, ISO date, none) delivering exactly once, 401
//! refresh through the real OAuth client, 5xx retries, errors with Zoom's
//! code and tracking id, the client-side limiter, deadlines, body caps and
//! a capability refusal through the run gateway.
//!
//! The tests that wait (`Retry-After`, backoffs, deadlines) run on tokio's
//! paused clock, which jumps ahead whenever every task waits on a timer:
//! the simulator runs on the same runtime, so a test still goes through
//! real HTTP over loopback but takes no real second to wait one out.
//! Durations are measured on that clock (`tokio::time::Instant`).

use std::sync::Arc;
use std::time::Duration;

use crate::support::{context, live, live_config, oauth, perform, start_sim};
use serde_json::{Value, json};
use tokio::time::Instant;
use zoomwire_engine::effects::gateway::RunEffects;
use zoomwire_engine::effects::{Capability, CapabilitySet, EffectErrorKind};
use zoomwire_engine::zoom::token::AccessTokens;
use zoomwire_sim::sim::{Fault, RateLimitType, RetryAfter, SimHandle, data};

struct Setup {
    sim: SimHandle,
    effects: zoomwire_engine::effects::live::LiveEffects,
    _archive: tempfile::TempDir,
}

async fn setup() -> Setup {
    setup_with(|_| {}).await
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

/// Requests to the REST API (token requests left out), as (method, raw path, status).
fn api_requests(sim: &SimHandle) -> Vec<(String, String, u16)> {
    sim.requests()
        .into_iter()
        .filter(|r| r.raw_path.starts_with("/v2/"))
        .map(|r| (r.method, r.raw_path, r.status))
        .collect()
}

#[tokio::test]
async fn gets_a_meeting_by_a_numeric_id_placeholder() {
    let s = setup().await;
    let meeting = perform(
        &s.effects,
        &context(Duration::from_secs(10)),
        "zoom.get",
        json!({"path": "/meetings/{id}", "params": {"id": data::WEEKLY_SYNC_ID}}),
    )
    .await
    .unwrap();
    assert_eq!(meeting["id"], data::WEEKLY_SYNC_ID);
    assert_eq!(
        api_requests(&s.sim),
        [(
            "GET".to_string(),
            format!("/v2/meetings/{}", data::WEEKLY_SYNC_ID),
            200
        )]
    );
}

#[tokio::test]
async fn double_encodes_awkward_uuids_on_the_raw_path() {
    let s = setup().await;
    let ctx = context(Duration::from_secs(10));
    let participants = perform(
        &s.effects,
        &ctx,
        "zoom.paginate",
        json!({"path": "/past_meetings/{uuid}/participants", "items_key": "participants",
               "params": {"uuid": data::SLASH_UUID}}),
    )
    .await
    .unwrap();
    assert_eq!(participants.as_array().unwrap().len(), 650);
    let recordings = perform(
        &s.effects,
        &ctx,
        "zoom.get",
        json!({"path": "/meetings/{uuid}/recordings", "params": {"uuid": data::DOUBLE_SLASH_UUID}}),
    )
    .await
    .unwrap();
    assert_eq!(recordings["uuid"], data::DOUBLE_SLASH_UUID);
    let paths: Vec<String> = api_requests(&s.sim).into_iter().map(|r| r.1).collect();
    assert_eq!(
        paths[0],
        "/v2/past_meetings/%252FaB3dE5gH7jK9mN1pQ3sT5v%253D%253D/participants"
    );
    assert_eq!(
        paths.last().unwrap(),
        "/v2/meetings/Zx8%252F%252FyW6vU4tS2rQ0pO8nM%253D%253D/recordings"
    );
}

#[tokio::test]
async fn paginates_across_pages_to_the_end() {
    let s = setup().await;
    let participants = perform(
        &s.effects,
        &context(Duration::from_secs(10)),
        "zoom.paginate",
        json!({"path": "/past_meetings/{uuid}/participants", "items_key": "participants",
               "params": {"uuid": data::WEEKLY_SYNC_UUID, "page_size": 100}}),
    )
    .await
    .unwrap();
    let items = participants.as_array().unwrap();
    assert_eq!(items.len(), 650);
    let mut ids: Vec<String> = items.iter().map(|p| p.to_string()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 650, "no page read twice");
    let queries: Vec<Option<String>> = s
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.raw_path.starts_with("/v2/past_meetings/"))
        .map(|r| r.query)
        .collect();
    assert_eq!(queries.len(), 7);
    assert_eq!(queries[0].as_deref(), Some("page_size=100"));
    assert!(
        queries[1].as_deref().unwrap().contains("next_page_token="),
        "{queries:?}"
    );
}

#[tokio::test]
async fn paginate_stops_at_the_page_cap_with_a_clear_error() {
    let s = setup_with(|config| config.zoom_max_pages = 2).await;
    let error = perform(
        &s.effects,
        &context(Duration::from_secs(10)),
        "zoom.paginate",
        json!({"path": "/past_meetings/{uuid}/participants", "items_key": "participants",
               "params": {"uuid": data::WEEKLY_SYNC_UUID, "page_size": 100}}),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Permanent);
    assert!(
        error
            .message
            .contains("more than 2 pages (200 items so far)"),
        "{}",
        error.message
    );
}

/// PATCH a meeting's topic through a 429 and check it was applied once.
async fn patch_through(s: &Setup, fault: Fault, deadline: Duration) -> Duration {
    s.sim.inject_fault(fault);
    let started = Instant::now();
    let answer = perform(
        &s.effects,
        &context(deadline),
        "zoom.patch",
        json!({"path": "/meetings/{id}", "params": {"id": data::WEEKLY_SYNC_ID},
               "body": {"topic": "Renamed"}}),
    )
    .await
    .unwrap();
    let took = started.elapsed();
    assert_eq!(answer, Value::Null, "204 gives null");
    let patches: Vec<u16> = api_requests(&s.sim)
        .into_iter()
        .filter(|r| r.0 == "PATCH")
        .map(|r| r.2)
        .collect();
    assert_eq!(patches, [429, 204], "exactly one delivery after the 429");
    took
}

#[tokio::test(start_paused = true)]
async fn waits_out_a_429_with_an_http_date_and_delivers_exactly_once() {
    let s = setup().await;
    let took = patch_through(
        &s,
        Fault::zoom_qps("/v2/meetings/", 1),
        Duration::from_secs(10),
    )
    .await;
    assert!(took >= Duration::from_millis(40), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    let meeting = perform(
        &s.effects,
        &context(Duration::from_secs(5)),
        "zoom.get",
        json!({"path": "/meetings/{id}", "params": {"id": data::WEEKLY_SYNC_ID}}),
    )
    .await
    .unwrap();
    assert_eq!(meeting["topic"], "Renamed");
}

#[tokio::test(start_paused = true)]
async fn waits_out_a_429_with_an_iso_date() {
    let s = setup().await;
    let took = patch_through(
        &s,
        Fault::zoom_daily("/v2/meetings/", 1, 2000),
        Duration::from_secs(10),
    )
    .await;
    // The ISO date has whole seconds: between one and two seconds away.
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn waits_about_a_second_after_a_bare_429() {
    let s = setup().await;
    let took = patch_through(
        &s,
        Fault::zoom_bare_429("/v2/meetings/", 1),
        Duration::from_secs(10),
    )
    .await;
    assert!(took >= Duration::from_millis(700), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn a_429_past_the_deadline_fails_at_once_as_transient() {
    let s = setup().await;
    s.sim.inject_fault(Fault::zoom_rate_limit(
        "/v2/meetings/",
        1,
        RateLimitType::DailyLimit,
        RetryAfter::IsoDate {
            after_ms: 3_600_000,
        },
    ));
    let started = Instant::now();
    let error = perform(
        &s.effects,
        &context(Duration::from_secs(5)),
        "zoom.delete",
        json!({"path": "/meetings/{id}", "params": {"id": data::WEEKLY_SYNC_ID}}),
    )
    .await
    .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(error.kind, EffectErrorKind::Transient);
    assert_eq!(error.status, Some(429));
    assert_eq!(error.code, Some(json!(429)));
    assert!(
        error.message.contains("rate limit Daily-limit Medium"),
        "{}",
        error.message
    );
    assert!(error.message.contains("deadline"), "{}", error.message);
    let deletes: Vec<u16> = api_requests(&s.sim)
        .into_iter()
        .filter(|r| r.0 == "DELETE")
        .map(|r| r.2)
        .collect();
    assert_eq!(deletes, [429], "nothing was deleted");
}

#[tokio::test]
async fn refreshes_an_expired_token_once_and_retries() {
    let sim = start_sim().await;
    let archive = tempfile::tempdir().unwrap();
    let tokens = oauth(&sim);
    let effects = live(live_config(&sim, archive.path()), tokens.clone());
    let ctx = context(Duration::from_secs(10));
    let get = json!({"path": "/users/{id}", "params": {"id": data::HOST_USER_ID}});
    perform(&effects, &ctx, "zoom.get", get.clone())
        .await
        .unwrap();
    sim.expire_tokens();
    let user = perform(&effects, &ctx, "zoom.get", get).await.unwrap();
    assert_eq!(user["id"], data::HOST_USER_ID);
    let statuses: Vec<u16> = api_requests(&sim).into_iter().map(|r| r.2).collect();
    assert_eq!(statuses, [200, 401, 200]);
    assert_eq!(tokens.fetch_count(), 2);
}

/// A token source whose token Zoom never accepts.
struct Rejected;

impl AccessTokens for Rejected {
    fn token(
        &self,
    ) -> zoomwire_engine::effects::BoxFuture<
        '_,
        Result<zoomwire_engine::zoom::token::AccessToken, zoomwire_engine::zoom::token::TokenError>,
    > {
        Box::pin(async {
            Ok(zoomwire_engine::zoom::token::AccessToken::new(
                "not-a-zoom-token",
            ))
        })
    }

    fn invalidate(&self, _rejected: &zoomwire_engine::zoom::token::AccessToken) {}
}

#[tokio::test]
async fn a_token_refused_twice_is_a_permanent_error_with_zooms_code() {
    let sim = start_sim().await;
    let archive = tempfile::tempdir().unwrap();
    let effects = live(live_config(&sim, archive.path()), Arc::new(Rejected));
    let error = perform(
        &effects,
        &context(Duration::from_secs(10)),
        "zoom.get",
        json!({"path": "/users/me"}),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Permanent);
    assert_eq!(error.status, Some(401));
    assert_eq!(error.code, Some(json!(124)));
    assert_eq!(api_requests(&sim).len(), 2, "one retry after the 401");
}

#[tokio::test(start_paused = true)]
async fn retries_5xx_with_backoff_for_reads() {
    let s = setup().await;
    s.sim.inject_fault(Fault::status("/v2/users/", 2, 502));
    let user = perform(
        &s.effects,
        &context(Duration::from_secs(10)),
        "zoom.get",
        json!({"path": "/users/{id}", "params": {"id": data::ALICE_USER_ID}}),
    )
    .await
    .unwrap();
    assert_eq!(user["id"], data::ALICE_USER_ID);
    let statuses: Vec<u16> = api_requests(&s.sim).into_iter().map(|r| r.2).collect();
    assert_eq!(statuses, [502, 502, 200]);
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_the_configured_attempts_as_transient() {
    let s = setup().await;
    s.sim.inject_fault(Fault::status("/v2/users/", 10, 500));
    let error = perform(
        &s.effects,
        &context(Duration::from_secs(10)),
        "zoom.get",
        json!({"path": "/users/me"}),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Transient);
    assert_eq!(error.status, Some(500));
    assert_eq!(api_requests(&s.sim).len(), 4, "attempts = 4");
}

#[tokio::test]
async fn does_not_repeat_a_write_after_an_ambiguous_500() {
    let s = setup().await;
    s.sim.inject_fault(Fault::status("/v2/meetings/", 1, 500));
    let error = perform(
        &s.effects,
        &context(Duration::from_secs(10)),
        "zoom.patch",
        json!({"path": "/meetings/{id}", "params": {"id": data::WEEKLY_SYNC_ID},
               "body": {"topic": "x"}}),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Transient);
    assert_eq!(api_requests(&s.sim).len(), 1);
}

#[tokio::test]
async fn errors_carry_zooms_code_message_and_tracking_id() {
    let s = setup().await;
    let error = perform(
        &s.effects,
        &context(Duration::from_secs(10)),
        "zoom.get",
        json!({"path": "/meetings/{id}", "params": {"id": 1}}),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Permanent);
    assert_eq!(error.status, Some(404));
    assert_eq!(error.code, Some(json!(3001)));
    assert!(
        error
            .message
            .starts_with("zoom api answered 404: Meeting does not exist: 1. (code 3001) (tracking id v=2.0;clid=sim;rid="),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn the_client_side_limiter_spaces_requests_out() {
    let s = setup_with(|config| {
        config.zoom_requests_per_second = std::num::NonZeroU32::new(5).unwrap();
    })
    .await;
    let ctx = context(Duration::from_secs(10));
    let started = Instant::now();
    for _ in 0..10 {
        perform(&s.effects, &ctx, "zoom.get", json!({"path": "/users/me"}))
            .await
            .unwrap();
    }
    // A burst of 5, then one every 200 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn never_waits_past_the_run_deadline() {
    let s = setup().await;
    s.sim.set_delay("/v2/users/", Duration::from_secs(3));
    let started = Instant::now();
    let error = perform(
        &s.effects,
        &context(Duration::from_millis(500)),
        "zoom.get",
        json!({"path": "/users/me"}),
    )
    .await
    .unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn caps_the_response_body() {
    let s = setup_with(|config| config.limits.max_response_bytes = 2000).await;
    let error = perform(
        &s.effects,
        &context(Duration::from_secs(10)),
        "zoom.get",
        json!({"path": "/past_meetings/{uuid}/participants",
               "params": {"uuid": data::WEEKLY_SYNC_UUID, "page_size": 300}}),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Permanent);
    assert!(
        error.message.contains("larger than the 2000 byte limit"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn refuses_paths_that_leave_the_api() {
    let s = setup().await;
    let error = perform(
        &s.effects,
        &context(Duration::from_secs(10)),
        "zoom.get",
        json!({"path": "/users/{id}/../../oauth/token", "params": {"id": "me"}}),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Permanent);
    assert!(api_requests(&s.sim).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_refuses_a_missing_capability_before_any_request() {
    let s = setup().await;
    let effects: Arc<dyn zoomwire_engine::effects::Effects> = Arc::new(s.effects);
    let runtime = tokio::runtime::Handle::current();
    let gateway = RunEffects::new(
        context(Duration::from_secs(10)),
        CapabilitySet::new([Capability::ZoomRead]),
        effects,
        runtime,
    );
    let (read, write) = tokio::task::spawn_blocking(move || {
        let read = gateway.call("zoom.get", json!({"path": "/users/me"}));
        let write = gateway.call(
            "zoom.delete",
            json!({"path": "/meetings/{id}", "params": {"id": data::WEEKLY_SYNC_ID}}),
        );
        (read, write)
    })
    .await
    .unwrap();
    assert_eq!(read.unwrap()["id"], data::HOST_USER_ID);
    let error = write.unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Denied);
    assert!(error.message.contains("`zoom.write`"), "{}", error.message);
    let methods: Vec<String> = api_requests(&s.sim).into_iter().map(|r| r.0).collect();
    assert_eq!(methods, ["GET"]);
}

#[tokio::test]
async fn each_call_uses_its_own_accounts_token_and_an_unknown_account_none() {
    use secrecy::SecretString;
    use zoomwire_engine::effects::ZoomAccountRef;
    use zoomwire_engine::effects::accounts::ZoomAccountClient;
    use zoomwire_engine::zoom::oauth::{OAuthClient, OAuthConfig};
    use zoomwire_sim::sim::{SimAccount, SimConfig};

    crate::support::install_crypto();
    // Files over TLS: a download sends its token only over https.
    let certs = crate::support::smtp::make_certificates();
    let tls = zoomwire_sim::sim::SimTls::from_files(
        &certs.path().join("server.pem"),
        &certs.path().join("server.key"),
    )
    .unwrap();
    let sim = zoomwire_sim::sim::start(SimConfig {
        extra_accounts: vec![SimAccount::named("sales")],
        tls: Some(tls),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let sales = sim.accounts()[1].clone();
    let sales_tokens = Arc::new(
        OAuthClient::new(OAuthConfig::new(
            sim.oauth_base(),
            &sales.account_id,
            &sales.client_id,
            SecretString::from(sales.client_secret.clone()),
        ))
        .unwrap(),
    );
    let archive = tempfile::tempdir().unwrap();
    let mut config = live_config(&sim, archive.path());
    config.ca_file = Some(certs.path().join("ca.pem"));
    let effects = crate::support::live_accounts(
        config,
        vec![
            ZoomAccountClient {
                name: "default".into(),
                account_id: sim.account_id().into(),
                tokens: oauth(&sim),
            },
            ZoomAccountClient {
                name: "sales".into(),
                account_id: sales.account_id.clone(),
                tokens: sales_tokens,
            },
        ],
    );
    let with = |account: ZoomAccountRef| zoomwire_engine::effects::EffectContext {
        zoom_account: account,
        ..context(Duration::from_secs(10))
    };
    let from_sales_webhook = with(ZoomAccountRef::ZoomId(Arc::from("sales")));
    let me = json!({"path": "/users/me"});

    let answer = perform(&effects, &from_sales_webhook, "zoom.get", me.clone())
        .await
        .unwrap();
    assert_eq!(answer["email"], "owner@sales.example");
    let named = json!({"path": "/users/me", "params": {"account": "default"}});
    let answer = perform(&effects, &from_sales_webhook, "zoom.get", named)
        .await
        .unwrap();
    assert_eq!(answer["email"], data::HOST_EMAIL);
    let calls: Vec<(Option<String>, Option<String>)> = sim
        .requests()
        .into_iter()
        .filter(|r| r.raw_path == "/v2/users/me")
        .map(|r| (r.account, r.query))
        .collect();
    assert_eq!(
        calls,
        [
            (Some("sales".into()), None),
            (Some("sim-account".into()), None)
        ],
        "each on its own token; `account` never goes to Zoom"
    );

    // An account that is not configured: a permanent error, and no call at all.
    let stranger = with(ZoomAccountRef::ZoomId(Arc::from("stranger")));
    let error = perform(&effects, &stranger, "zoom.get", me.clone())
        .await
        .unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Permanent);
    assert!(
        error.message.contains("never use another account's token"),
        "{}",
        error.message
    );
    let unnamed = with(ZoomAccountRef::Unspecified);
    let error = perform(
        &effects,
        &unnamed,
        "zoom.paginate",
        json!({"path": "/users", "items_key": "users"}),
    )
    .await
    .unwrap_err();
    assert!(
        error.message.contains("add `account:` to the rule"),
        "{}",
        error.message
    );
    let requests = sim.requests().len();
    let file = json!({"file": sim.download_url("rec-85512345678-m4a"), "dest": "x.m4a"});
    let error = perform(&effects, &stranger, "zoom.download", file.clone())
        .await
        .unwrap_err();
    assert!(error.message.contains("stranger"), "{}", error.message);
    assert_eq!(
        sim.requests().len(),
        requests,
        "no download without the account's token"
    );

    // The download's OAuth fallback is the run's account's token.
    let sales_run = with(ZoomAccountRef::Named(Arc::from("sales")));
    perform(&effects, &sales_run, "zoom.download", file)
        .await
        .unwrap();
    let download = sim
        .requests()
        .into_iter()
        .find(|r| r.raw_path.starts_with("/rec/download/"))
        .unwrap();
    assert_eq!(download.account.as_deref(), Some("sales"));
}
