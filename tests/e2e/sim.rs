//! End-to-end tests of the Zoom simulator over loopback: OAuth, REST with
//! pagination, faults and the double-encoding rule, Slack, downloads and the
//! control API; several accounts kept apart; the listings reconciliation
//! reads (Zoom's date rules, recordings still processing, plans); late and
//! repeated deliveries. The OAuth client's cache is tested here too, since it is the
//! simulator's first customer, on tokio's paused clock (the simulator on the
//! same runtime): its freshness and expiry follow that clock, so waiting
//! them out takes no real time.

use std::sync::Arc;
use std::time::Duration;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};
use zoomwire_engine::zoom::oauth::{OAuthClient, OAuthConfig};
use zoomwire_engine::zoom::token::{AccessTokens, TokenError};
use zoomwire_sim::sim::{
    self, Fault, NewMeeting, NewUser, RecordingState, SimAccount, SimConfig, SimHandle, SimPlan,
    data, download::download_byte,
};

fn http() -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client builds")
}

async fn sim() -> SimHandle {
    sim::start(SimConfig::default()).await.expect("sim starts")
}

async fn fetch_token(client: &reqwest::Client, sim: &SimHandle) -> String {
    let response = client
        .post(format!("{}/oauth/token", sim.oauth_base()))
        .basic_auth(sim.client_id(), Some(sim.client_secret()))
        .form(&[
            ("grant_type", "account_credentials"),
            ("account_id", sim.account_id()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 3600);
    body["access_token"].as_str().unwrap().to_string()
}

fn encode(segment: &str) -> String {
    utf8_percent_encode(segment, NON_ALPHANUMERIC).to_string()
}

#[tokio::test]
async fn oauth_token_endpoint_speaks_zooms_protocol() {
    let sim = sim().await;
    let client = http();
    let token = fetch_token(&client, &sim).await;
    assert!(!token.is_empty());

    // Parameters in the query string instead of the body: 400.
    let response = client
        .post(format!(
            "{}/oauth/token?grant_type=account_credentials&account_id={}",
            sim.oauth_base(),
            sim.account_id()
        ))
        .basic_auth(sim.client_id(), Some(sim.client_secret()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    let response = client
        .post(format!("{}/oauth/token", sim.oauth_base()))
        .basic_auth(sim.client_id(), Some("wrong"))
        .form(&[
            ("grant_type", "account_credentials"),
            ("account_id", sim.account_id()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"reason": "Invalid client_id or client_secret", "error": "invalid_client"})
    );

    // The secret never reaches the request log.
    let requests = sim.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(
        requests[0].auth.as_deref(),
        Some("basic client_id=sim-client-id")
    );
    assert!(
        !format!("{requests:?}").contains(sim.client_secret()),
        "secret leaked into the request log"
    );
}

#[tokio::test]
async fn rest_pages_through_participants_and_ends_with_an_empty_token() {
    let sim = sim().await;
    let client = http();
    let token = fetch_token(&client, &sim).await;
    let uuid = encode(&encode(data::WEEKLY_SYNC_UUID));
    let mut next = String::new();
    let mut names = Vec::new();
    let mut pages = 0;
    loop {
        let response = client
            .get(format!(
                "{}/past_meetings/{uuid}/participants",
                sim.api_base()
            ))
            .bearer_auth(&token)
            .query(&[("page_size", "300"), ("next_page_token", next.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().contains_key("x-zm-trackingid"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["total_records"], 650);
        for participant in body["participants"].as_array().unwrap() {
            names.push(participant["name"].as_str().unwrap().to_string());
        }
        pages += 1;
        next = body["next_page_token"].as_str().unwrap().to_string();
        if next.is_empty() {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names.len(), 650);
    names.dedup();
    assert_eq!(names.len(), 650, "no participant twice");
}

#[tokio::test]
async fn rest_meeting_recording_and_user_endpoints() {
    let sim = sim().await;
    let client = http();
    let token = fetch_token(&client, &sim).await;
    let api = sim.api_base();
    let get = |path: String| {
        client
            .get(format!("{api}{path}"))
            .bearer_auth(&token)
            .send()
    };

    let user: Value = get("/users/me".into()).await.unwrap().json().await.unwrap();
    assert_eq!(user["id"], data::HOST_USER_ID);
    let missing = get("/users/nobody".into()).await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(missing.json::<Value>().await.unwrap()["code"], 1001);

    let id = data::WEEKLY_SYNC_ID;
    let meeting: Value = get(format!("/meetings/{id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meeting["topic"], "Weekly Sync");
    let patched = client
        .patch(format!("{api}/meetings/{id}"))
        .bearer_auth(&token)
        .json(&json!({"topic": "Renamed", "settings": {"waiting_room": false}}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::NO_CONTENT);
    let meeting: Value = get(format!("/meetings/{id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meeting["topic"], "Renamed");
    assert_eq!(meeting["settings"]["waiting_room"], false);
    assert_eq!(meeting["settings"]["host_video"], true);

    let recordings: Value = get(format!(
        "/meetings/{id}/recordings?include_fields=download_access_token"
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(recordings["download_access_token"], sim.download_token());
    let files = recordings["recording_files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    let file_id = files[0]["id"].as_str().unwrap();
    assert_eq!(
        files[0]["download_url"].as_str().unwrap(),
        sim.download_url(file_id)
    );

    let listing: Value = get(format!(
        "/users/{}/recordings?page_size=1&from=2024-11-01&to=2024-11-30",
        data::HOST_USER_ID
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(listing["total_records"], 2);
    assert_eq!(listing["meetings"].as_array().unwrap().len(), 1);
    assert!(!listing["next_page_token"].as_str().unwrap().is_empty());

    let deleted = client
        .delete(format!("{api}/meetings/{id}/recordings/{file_id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let deleted = client
        .delete(format!("{api}/meetings/{id}/recordings?action=trash"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let gone = get(format!("/meetings/{id}/recordings")).await.unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    assert_eq!(gone.json::<Value>().await.unwrap()["code"], 3301);

    let report = get(format!(
        "/report/meetings/{}/participants?page_size=100",
        data::NO_RECORDING_MEETING_ID
    ))
    .await
    .unwrap();
    assert_eq!(report.status(), StatusCode::OK);
    assert_eq!(report.json::<Value>().await.unwrap()["page_count"], 7);

    let deleted = client
        .delete(format!("{api}/meetings/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let gone = get(format!("/meetings/{id}")).await.unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    assert_eq!(gone.json::<Value>().await.unwrap()["code"], 3001);
}

#[tokio::test]
async fn rest_refuses_expired_and_unknown_tokens_with_code_124() {
    let sim = sim().await;
    let client = http();
    let token = fetch_token(&client, &sim).await;
    let url = format!("{}/users/me", sim.api_base());
    let ok = client.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    sim.expire_tokens();
    let expired = client.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(expired.status(), StatusCode::UNAUTHORIZED);
    assert!(expired.headers().contains_key("x-zm-trackingid"));
    assert_eq!(
        expired.json::<Value>().await.unwrap(),
        json!({"code": 124, "message": "Access token is expired."})
    );
    let unknown = client
        .get(&url)
        .bearer_auth("made-up")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.json::<Value>().await.unwrap()["code"], 124);
    let fresh = fetch_token(&client, &sim).await;
    let ok = client.get(&url).bearer_auth(&fresh).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test]
async fn awkward_uuids_are_found_only_when_double_encoded_and_the_raw_path_is_recorded() {
    let sim = sim().await;
    let client = http();
    let token = fetch_token(&client, &sim).await;
    for uuid in [data::SLASH_UUID, data::DOUBLE_SLASH_UUID] {
        let once = encode(uuid);
        let twice = encode(&once);
        let url =
            |segment: &str| format!("{}/past_meetings/{segment}/participants", sim.api_base());
        let response = client
            .get(url(&once))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::NOT_FOUND,
            "{uuid} encoded once"
        );
        let response = client
            .get(url(&twice))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{uuid} encoded twice");
        let last = sim.requests().pop().unwrap();
        assert_eq!(
            last.raw_path,
            format!("/v2/past_meetings/{twice}/participants")
        );
        assert_eq!(last.status, 200);
    }
    let slash = sim
        .requests()
        .into_iter()
        .find(|r| r.status == 200 && r.raw_path.starts_with("/v2/"))
        .unwrap();
    assert!(slash.raw_path.contains("%252F"), "{}", slash.raw_path);
}

#[tokio::test]
async fn injected_rate_limits_carry_zooms_headers_then_clear() {
    let sim = sim().await;
    let client = http();
    let token = fetch_token(&client, &sim).await;
    let url = format!("{}/users/me", sim.api_base());
    sim.inject_fault(Fault::zoom_qps("/v2/users", 1));
    sim.inject_fault(Fault::zoom_daily("/v2/users", 1, 60_000));
    sim.inject_fault(Fault::status("/v2/users", 1, 503));

    let qps = client.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(qps.status(), StatusCode::TOO_MANY_REQUESTS);
    let headers = qps.headers();
    assert_eq!(headers["x-ratelimit-type"], "QPS");
    assert_eq!(headers["x-ratelimit-category"], "Medium");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    assert!(headers.contains_key("x-ratelimit-limit"));
    assert!(headers.contains_key("x-zm-trackingid"));
    let retry_after = headers["retry-after"].to_str().unwrap();
    assert!(
        httpdate::parse_http_date(retry_after).is_ok(),
        "{retry_after}"
    );
    assert_eq!(qps.json::<Value>().await.unwrap()["code"], 429);

    let daily = client.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(daily.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(daily.headers()["x-ratelimit-type"], "Daily-limit");
    let retry_after = daily.headers()["retry-after"].to_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(retry_after).is_ok(),
        "{retry_after}"
    );

    let unavailable = client.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(unavailable.status(), StatusCode::SERVICE_UNAVAILABLE);

    let ok = client.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let statuses: Vec<u16> = sim.requests().iter().skip(1).map(|r| r.status).collect();
    assert_eq!(statuses, [429, 429, 503, 200]);
}

#[tokio::test]
async fn delays_slow_a_path_prefix_down() {
    let sim = sim().await;
    let client = http();
    let token = fetch_token(&client, &sim).await;
    sim.set_delay("/v2/users", Duration::from_millis(300));
    let started = std::time::Instant::now();
    let response = client
        .get(format!("{}/users/me", sim.api_base()))
        .bearer_auth(&token)
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(response.is_err(), "a 100 ms timeout beats a 300 ms delay");
    sim.set_delay("/v2/users", Duration::ZERO);
    let response = client
        .get(format!("{}/users/me", sim.api_base()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Polls until `done` holds, for at most five seconds.
async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn a_closed_gate_holds_requests_until_the_test_opens_it() {
    let sim = sim().await;
    let client = http();
    let token = fetch_token(&client, &sim).await;
    let url = format!("{}/users/me", sim.api_base());
    let held = |sim: &SimHandle| sim.in_flight().contains(&"GET /v2/users/me".to_string());

    sim.close_gate("/v2/users");
    let request = tokio::spawn(client.get(&url).bearer_auth(&token).send());
    until("the request at the gate", || held(&sim)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!request.is_finished(), "held at the gate");
    sim.open_gate("/v2/users");
    let response = request.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(!held(&sim));

    // A request whose client gives up at the gate is forgotten, never answered.
    sim.close_gate("/v2/users");
    let gave_up = client
        .get(&url)
        .bearer_auth(&token)
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(gave_up.is_err(), "held past the client's timeout");
    until("the abandoned request to leave", || !held(&sim)).await;
    sim.open_gate("/v2/users");
    let answered = sim
        .requests()
        .iter()
        .filter(|r| r.raw_path == "/v2/users/me")
        .count();
    assert_eq!(answered, 1, "only the request let through was answered");
}

#[tokio::test]
async fn slack_posts_are_checked_and_recorded() {
    let sim = sim().await;
    let client = http();
    let post = |token: Option<&str>, body: Value| {
        let mut request = client
            .post(format!("{}/chat.postMessage", sim.slack_api_base()))
            .json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let bot = sim.slack_bot_token().to_string();
    let ok: Value = post(
        Some(&bot),
        json!({"channel": "#recordings", "text": "ready"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(ok["ok"], true);
    assert!(ok["channel"].as_str().unwrap().starts_with('C'));
    assert!(ok["ts"].as_str().unwrap().contains('.'));

    let missing: Value = post(Some(&bot), json!({"channel": "#nope", "text": "x"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(missing, json!({"ok": false, "error": "channel_not_found"}));
    let unauthed: Value = post(None, json!({"channel": "#ops", "text": "x"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(unauthed["error"], "not_authed");
    let bad: Value = post(Some("xoxb-wrong"), json!({"channel": "#ops", "text": "x"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bad["error"], "invalid_auth");

    let hook = client
        .post(sim.slack_webhook_url("default"))
        .json(&json!({"text": "hello from a webhook"}))
        .send()
        .await
        .unwrap();
    assert_eq!(hook.status(), StatusCode::OK);
    assert_eq!(hook.text().await.unwrap(), "ok");

    sim.inject_fault(Fault::slack_rate_limit("/slack/", 1, 2));
    let limited = post(Some(&bot), json!({"channel": "#ops", "text": "x"}))
        .await
        .unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers()["retry-after"], "2");

    let posts = sim.slack_posts();
    assert_eq!(posts.len(), 2);
    assert_eq!(posts[0].via, "chat.postMessage");
    assert_eq!(posts[0].channel.as_deref(), Some("#recordings"));
    assert_eq!(posts[0].text.as_deref(), Some("ready"));
    assert_eq!(posts[1].via, "webhook:default");
    let slack_requests = sim.requests();
    assert_eq!(
        slack_requests[0].auth.as_deref(),
        Some("bearer slack_bot_token")
    );
    assert!(!format!("{slack_requests:?}").contains(&bot));
}

#[tokio::test]
async fn downloads_redirect_then_stream_generated_bytes_with_a_length() {
    let sim = sim().await;
    let client = http();
    let gib = 1u64 << 30;
    sim.add_download("big.mp4", gib);

    let unauthorised = client
        .get(sim.download_url("big.mp4"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorised.status(), StatusCode::UNAUTHORIZED);
    let missing = client
        .get(sim.download_url("nope.mp4"))
        .bearer_auth(sim.download_token())
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let redirect = client
        .get(format!(
            "{}?access_token={}",
            sim.download_url("big.mp4"),
            sim.download_token()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), StatusCode::FOUND);
    let location = redirect.headers()["location"].to_str().unwrap().to_string();
    assert!(location.contains("/rec/stream/big.mp4"), "{location}");

    // A client following redirects gets the stream: read a few MB of 1 GiB.
    let following = reqwest::Client::new();
    let mut response = following
        .get(sim.download_url("big.mp4"))
        .bearer_auth(sim.download_token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.content_length(), Some(gib));
    let mut offset = 0u64;
    while offset < 4 * 1024 * 1024 {
        let chunk = response.chunk().await.unwrap().expect("more bytes");
        for (i, byte) in chunk.iter().enumerate() {
            assert_eq!(*byte, download_byte(offset + i as u64));
        }
        offset += chunk.len() as u64;
    }
    drop(response);

    let ranged = following
        .get(&location)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.content_length(), Some(1000));
    let bytes = ranged.bytes().await.unwrap();
    assert_eq!(bytes[0], download_byte(1000));

    let forged = following
        .get(location.replace("signature=", "signature=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let recorded = sim.requests();
    assert!(recorded.iter().all(|r| {
        !r.query
            .as_deref()
            .unwrap_or("")
            .contains(sim.download_token())
    }));
}

#[tokio::test]
async fn control_api_over_http() {
    let sim = sim().await;
    let client = http();
    let control = format!("{}/_sim", sim.base_url());
    let token = fetch_token(&client, &sim).await;
    let fault = serde_json::to_value(Fault::status("/v2/users", 1, 500)).unwrap();
    let response = client
        .post(format!("{control}/faults"))
        .json(&fault)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let failed = client
        .get(format!("{}/users/me", sim.api_base()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);

    let requests: Vec<Value> = client
        .get(format!("{control}/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(requests.len(), 2, "control requests are not recorded");
    assert_eq!(requests[1]["raw_path"], "/v2/users/me");
    assert_eq!(requests[1]["status"], 500);

    let emitted: Value = client
        .post(format!("{control}/events"))
        .body(r#"{"event":"user.created","event_ts":1,"payload":{}}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(emitted["delivered"], 0, "no connection open");

    let reset = client
        .post(format!("{control}/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), StatusCode::NO_CONTENT);
    assert!(sim.requests().is_empty());
    let event = sim.recording_completed_event(data::WEEKLY_SYNC_ID).unwrap();
    assert_eq!(event["download_token"], sim.download_token());
    assert!(
        sim.env_lines()
            .contains(&format!("ZOOM_API_BASE={}", sim.api_base()))
    );
}

// ---- the OAuth token cache against the simulator ----

fn oauth_client(sim: &SimHandle, secret: &str, margin: Duration) -> OAuthClient {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut config = OAuthConfig::new(
        sim.oauth_base(),
        sim.account_id(),
        sim.client_id(),
        SecretString::from(secret.to_string()),
    );
    config.refresh_margin = margin;
    config.request_timeout = Duration::from_secs(5);
    OAuthClient::new(config).expect("client builds")
}

fn token_requests(sim: &SimHandle) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.raw_path == "/oauth/token")
        .count()
}

#[tokio::test(start_paused = true)]
async fn oauth_client_caches_and_refreshes_before_expiry() {
    let sim = sim::start(SimConfig {
        token_lifetime: Duration::from_secs(2),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    // Fresh for 2 s - 1.5 s = 500 ms, then fetched anew.
    let client = oauth_client(&sim, sim.client_secret(), Duration::from_millis(1500));
    let first = client.token().await.unwrap();
    let again = client.token().await.unwrap();
    assert_eq!(first, again);
    assert_eq!(token_requests(&sim), 1);
    let expiry = client.expires_at(&first).expect("expiry known");
    // On tokio's clock, paused here, which the client's cache follows.
    let left = tokio::time::Instant::from_std(expiry)
        .saturating_duration_since(tokio::time::Instant::now());
    assert!(
        left > Duration::from_millis(1500) && left <= Duration::from_secs(2),
        "{left:?}"
    );

    tokio::time::sleep(Duration::from_millis(600)).await;
    let refreshed = client.token().await.unwrap();
    assert_ne!(refreshed, first, "refreshed before the old one expired");
    assert_eq!(token_requests(&sim), 2);
    // The old token was still valid when it was replaced.
    let response = http()
        .get(format!("{}/users/me", sim.api_base()))
        .bearer_auth(first.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    client.invalidate(&first);
    assert_eq!(
        client.token().await.unwrap(),
        refreshed,
        "a stale rejection changes nothing"
    );
    client.invalidate(&refreshed);
    let after_rejection = client.token().await.unwrap();
    assert_ne!(after_rejection, refreshed);
    assert_eq!(token_requests(&sim), 3);
    assert!(!format!("{client:?}").contains(sim.client_secret()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_client_sends_one_request_however_many_callers_wait() {
    let sim = sim().await;
    sim.set_delay("/oauth/token", Duration::from_millis(200));
    let client = Arc::new(oauth_client(
        &sim,
        sim.client_secret(),
        Duration::from_secs(60),
    ));
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.token().await })
        })
        .collect();
    let mut tokens = Vec::new();
    for caller in callers {
        tokens.push(caller.await.unwrap().unwrap());
    }
    assert!(tokens.iter().all(|t| *t == tokens[0]));
    assert_eq!(token_requests(&sim), 1);
    assert_eq!(client.fetch_count(), 1);
}

#[tokio::test]
async fn oauth_client_reports_refused_credentials_and_outages_clearly() {
    let sim = sim().await;
    let client = oauth_client(&sim, "wrong-secret", Duration::from_secs(60));
    let error = client.token().await.unwrap_err();
    let TokenError::Refused { reason, setting } = &error else {
        panic!("expected a refusal, got {error:?}")
    };
    assert_eq!(reason, "Invalid client_id or client_secret");
    assert!(setting.contains("ZOOM_CLIENT_SECRET"), "{setting}");
    assert!(!error.to_string().contains("wrong-secret"));

    let mut config = OAuthConfig::new(
        sim.oauth_base(),
        "other-account",
        sim.client_id(),
        SecretString::from(sim.client_secret().to_string()),
    );
    config.request_timeout = Duration::from_secs(5);
    let wrong_account = OAuthClient::new(config).unwrap();
    let error = wrong_account.token().await.unwrap_err();
    assert!(
        matches!(&error, TokenError::Refused { setting, .. } if setting == "ZOOM_ACCOUNT_ID"),
        "{error:?}"
    );

    let client = oauth_client(&sim, sim.client_secret(), Duration::from_secs(60));
    sim.inject_fault(Fault::status("/oauth/token", 1, 503));
    let error = client.token().await.unwrap_err();
    assert!(matches!(error, TokenError::Unavailable(_)), "{error:?}");
    assert!(
        client.token().await.is_ok(),
        "recovers once the endpoint does"
    );

    let nowhere = SimConfig::default();
    drop(sim);
    let mut config = OAuthConfig::new(
        "http://127.0.0.1:9",
        nowhere.account_id,
        nowhere.client_id,
        SecretString::from(nowhere.client_secret),
    );
    config.request_timeout = Duration::from_secs(2);
    let error = OAuthClient::new(config).unwrap().token().await.unwrap_err();
    assert!(matches!(error, TokenError::Unavailable(_)), "{error:?}");
}

#[tokio::test(start_paused = true)]
async fn oauth_client_serves_a_still_valid_token_while_the_endpoint_is_down() {
    let sim = sim::start(SimConfig {
        token_lifetime: Duration::from_secs(1),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    // Fresh for 200 ms, valid for 1 s.
    let client = oauth_client(&sim, sim.client_secret(), Duration::from_millis(800));
    let token = client.token().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sim.inject_fault(Fault::status("/oauth/token", 10, 503));
    assert_eq!(
        client.token().await.unwrap(),
        token,
        "the cached token still works"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let error = client.token().await.unwrap_err();
    assert!(matches!(error, TokenError::Unavailable(_)), "{error:?}");
}

#[tokio::test]
async fn zoomwire_sim_serves_on_the_given_address_and_reports_a_busy_one() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let error = zoomwire::commands::sim::run(Some(busy.local_addr().unwrap()))
        .await
        .unwrap_err();
    assert!(
        matches!(error, zoomwire::commands::CommandError::Usage(_)),
        "{error:?}"
    );
    assert!(error.to_string().contains("cannot listen"), "{error}");

    let free = busy.local_addr().unwrap();
    drop(busy);
    let command = tokio::spawn(zoomwire::commands::sim::run(Some(free)));
    let client = http();
    let mut answered = false;
    for _ in 0..100 {
        let response = client
            .post(format!("http://{free}/oauth/token"))
            .basic_auth("sim-client-id", Some("sim-client-secret"))
            .form(&[
                ("grant_type", "account_credentials"),
                ("account_id", "sim-account"),
            ])
            .send()
            .await;
        if response.is_ok_and(|r| r.status() == StatusCode::OK) {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    command.abort();
    assert!(
        answered,
        "the simulator answered on {free} with the default credentials"
    );
}

async fn token_for(client: &reqwest::Client, sim: &SimHandle, account: &SimAccount) -> String {
    let response = client
        .post(format!("{}/oauth/token", sim.oauth_base()))
        .basic_auth(&account.client_id, Some(&account.client_secret))
        .form(&[
            ("grant_type", "account_credentials"),
            ("account_id", account.account_id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_string()
}

async fn get_json(client: &reqwest::Client, url: String, token: &str) -> (StatusCode, Value) {
    let response = client.get(url).bearer_auth(token).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn accounts_are_kept_apart_and_every_call_records_its_tokens_account() {
    let sim = sim::start(SimConfig {
        extra_accounts: vec![SimAccount::named("sales")],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let client = http();
    let primary = sim.accounts()[0].clone();
    let sales = sim.accounts()[1].clone();
    let primary_token = token_for(&client, &sim, &primary).await;
    let sales_token = token_for(&client, &sim, &sales).await;
    let api = sim.api_base();

    let (_, me) = get_json(&client, format!("{api}/users/me"), &sales_token).await;
    assert_eq!(me["email"], "owner@sales.example");
    // The primary account's meeting and user are not the sales token's.
    let (status, body) = get_json(
        &client,
        format!("{api}/meetings/{}", data::WEEKLY_SYNC_ID),
        &sales_token,
    )
    .await;
    assert_eq!((status.as_u16(), body["code"].clone()), (404, json!(3001)));
    let (status, body) = get_json(
        &client,
        format!("{api}/users/{}", data::HOST_USER_ID),
        &sales_token,
    )
    .await;
    assert_eq!((status.as_u16(), body["code"].clone()), (400, json!(1010)));
    let (status, _) = get_json(&client, format!("{api}/users/me"), &primary_token).await;
    assert_eq!(status, StatusCode::OK);

    let accounts: Vec<Option<String>> = sim
        .requests()
        .into_iter()
        .filter(|r| r.raw_path.starts_with("/v2/"))
        .map(|r| r.account)
        .collect();
    assert_eq!(
        accounts,
        [
            Some("sales".into()),
            Some("sales".into()),
            Some("sales".into()),
            Some("sim-account".into())
        ]
    );
    // A subscription takes only its own account's token.
    let refused = format!(
        "{}?subscriptionId={}&access_token={}",
        sim.ws_base(),
        sales.subscription_ids[0],
        primary_token
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(refused).await.unwrap();
    use futures_util::StreamExt;
    let first = socket.next().await.unwrap().unwrap().into_text().unwrap();
    let first: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["success"], false);
}

#[tokio::test]
async fn recording_listings_follow_zooms_dates_and_list_recordings_still_processing() {
    let sim = sim().await;
    let client = http();
    let token = fetch_token(&client, &sim).await;
    let api = sim.api_base();
    let now = chrono::Utc::now();
    let today = now.date_naive();
    let meeting = |topic: &str, days_ago: i64, state: RecordingState| NewMeeting {
        topic: topic.into(),
        host_id: None,
        start: now - chrono::Duration::days(days_ago),
        minutes: 30,
        participants: 3,
        recording: Some(state),
    };
    let processing = sim
        .add_meeting(
            None,
            &meeting("Today, processing", 0, RecordingState::Processing),
        )
        .unwrap();
    sim.add_meeting(
        None,
        &meeting("Three days ago", 3, RecordingState::Completed),
    )
    .unwrap();

    // Without dates: today to tomorrow (UTC); recordings still processing are listed.
    let (_, listing) = get_json(&client, format!("{api}/accounts/me/recordings"), &token).await;
    assert_eq!(listing["from"], today.to_string());
    assert_eq!(listing["to"], today.succ_opt().unwrap().to_string());
    let meetings = listing["meetings"].as_array().unwrap();
    assert_eq!(meetings.len(), 1, "{listing}");
    assert_eq!(
        meetings[0]["host_email"],
        data::HOST_EMAIL,
        "the account listing names the host"
    );
    assert!(
        meetings[0]["recording_files"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["status"] == "processing")
    );
    assert!(sim.complete_recording(&processing));
    let (_, listing) = get_json(&client, format!("{api}/accounts/me/recordings"), &token).await;
    assert!(
        listing["meetings"][0]["recording_files"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["status"] == "completed")
    );

    // A range: by the meeting's start date; the per-user listing too, without host_email.
    let from = (today - chrono::Duration::days(4)).to_string();
    let url = format!("{api}/users/me/recordings?from={from}&to={today}");
    let (_, listing) = get_json(&client, url, &token).await;
    assert_eq!(listing["total_records"], 2, "{listing}");
    assert!(listing["meetings"][0].get("host_email").is_none());

    // At most one month, UTC dates only.
    for bad in [
        "from=2024-01-01&to=2024-03-01",
        "from=2024-11-20&to=2024-11-19",
        "from=19-11-2024",
    ] {
        let (status, body) = get_json(
            &client,
            format!("{api}/accounts/me/recordings?{bad}"),
            &token,
        )
        .await;
        assert_eq!(
            (status.as_u16(), body["code"].clone()),
            (400, json!(300)),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn past_meetings_and_users_are_listed_as_reconciliation_reads_them() {
    let sim = sim::start(SimConfig {
        extra_accounts: vec![SimAccount {
            plan: SimPlan::Pro,
            ..SimAccount::named("pro")
        }],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let client = http();
    let token = fetch_token(&client, &sim).await;
    let pro = sim.accounts()[1].clone();
    let pro_token = token_for(&client, &sim, &pro).await;
    let api = sim.api_base();
    let mut ended = NewMeeting::ended_now("Retro");
    ended.participants = 4;
    let uuid = sim.add_meeting(None, &ended).unwrap();
    let mut alone = NewMeeting::ended_now("Alone");
    alone.participants = 1;
    sim.add_meeting(None, &alone).unwrap();
    sim.add_meeting(Some("pro"), &ended).unwrap();
    let user = NewUser {
        email: "new@example.com".into(),
        first_name: "New".into(),
        last_name: "Person".into(),
        status: "pending".into(),
    };
    sim.add_user(None, &user).unwrap();

    // The meetings started 31 minutes ago: yesterday (UTC) just after midnight,
    // so the range starts yesterday rather than at Zoom's default of today.
    let past = format!(
        "type=past&from={}",
        (chrono::Utc::now().date_naive() - chrono::Duration::days(1))
    );
    // The dashboard lists every past meeting; the report only those of two or more.
    let (_, dashboard) = get_json(&client, format!("{api}/metrics/meetings?{past}"), &token).await;
    assert_eq!(
        dashboard["meetings"].as_array().unwrap().len(),
        2,
        "{dashboard}"
    );
    let (_, report) = get_json(
        &client,
        format!("{api}/report/users/me/meetings?{past}"),
        &token,
    )
    .await;
    let reported = report["meetings"].as_array().unwrap();
    assert_eq!(reported.len(), 1, "{report}");
    assert_eq!(reported[0]["topic"], "Retro");
    assert!(reported[0]["end_time"].is_string());
    // A Pro account has the report but not the dashboard.
    let (status, body) = get_json(
        &client,
        format!("{api}/metrics/meetings?{past}"),
        &pro_token,
    )
    .await;
    assert_eq!((status.as_u16(), body["code"].clone()), (400, json!(200)));
    let (status, _) = get_json(
        &client,
        format!("{api}/report/users/me/meetings?{past}"),
        &pro_token,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // One past meeting's details, by its (double-encoded) uuid.
    let segment = encode(&encode(&uuid));
    let (status, details) =
        get_json(&client, format!("{api}/past_meetings/{segment}"), &token).await;
    assert_eq!(status, StatusCode::OK, "{details}");
    assert_eq!(details["host_id"], data::HOST_USER_ID);
    assert_eq!(details["participants_count"], 4);

    // Users by status, with when they were created.
    let (_, pending) = get_json(&client, format!("{api}/users?status=pending"), &token).await;
    let pending = pending["users"].as_array().unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["email"], "new@example.com");
    assert!(pending[0]["created_at"].is_string());
    let (_, active) = get_json(&client, format!("{api}/users"), &token).await;
    assert_eq!(active["users"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn events_can_be_delivered_late_and_twice() {
    let sim = sim().await;
    let sub = sim.subscription_id().to_string();
    let token = sim.issue_token();
    let url = format!(
        "{}?subscriptionId={sub}&access_token={token}",
        sim.ws_base()
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    use futures_util::StreamExt;
    let _build = socket.next().await.unwrap().unwrap();
    let event =
        json!({"event": "meeting.ended", "event_ts": 1, "payload": {"object": {"uuid": "late=="}}});
    let sent = std::time::Instant::now();
    sim.emit_event_later(None, &event, Duration::from_millis(300));
    sim.emit_event_later(None, &event, Duration::from_millis(300));
    for _ in 0..2 {
        let frame = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .into_text()
            .unwrap();
        let frame: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(frame["module"], "message");
    }
    assert!(sent.elapsed() >= Duration::from_millis(300));
}

#[test]
fn the_silent_client_timeout_is_finite_by_default() {
    assert_eq!(
        SimConfig::default().silent_client_timeout,
        Some(sim::DEFAULT_SILENT_CLIENT_TIMEOUT)
    );
    assert!(
        sim::DEFAULT_SILENT_CLIENT_TIMEOUT > Duration::from_secs(30),
        "longer than a heartbeat interval"
    );
}
