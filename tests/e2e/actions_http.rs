//! `http.request` end to end against two small local servers (127.0.0.1 on
//! two ports, allowed as `http:127.0.0.1:*`: loopback only when the rule
//! names the address), and one over TLS: answers and their shapes, refused
//! hosts, ports and redirects (another name for the same server, userinfo
//! tricks, https to http), a name resolving to loopback, redirect method
//! rules, headers dropped across origins, and the size and time limits.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{context_with_hosts, install_crypto, live, perform};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::{Value, json};
use zoomwire_engine::effects::EffectErrorKind;
use zoomwire_engine::effects::gateway::RunEffects;
use zoomwire_engine::effects::live::{LiveConfig, LiveEffects};
use zoomwire_engine::effects::{Capability, CapabilitySet};
use zoomwire_engine::zoom::token::{AccessToken, StaticToken};

/// Requests a test server saw, as "METHOD path".
type Seen = Arc<Mutex<Vec<String>>>;

struct Server {
    addr: SocketAddr,
    seen: Seen,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

async fn server() -> Server {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route(
            "/json",
            get(|| async { axum::Json(json!({"hello": "world"})) }),
        )
        .route("/text", get(|| async { "plain text" }))
        .route("/echo", any(echo))
        .route("/redirect", any(redirect))
        .route("/status/{code}", get(status))
        .route(
            "/loop",
            get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/loop")]) }),
        )
        .route("/big", get(|| async { "x".repeat(100_000) }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                "late"
            }),
        )
        .layer(axum::middleware::from_fn_with_state(seen.clone(), remember))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server { addr, seen }
}

async fn remember(
    State(seen): State<Seen>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    seen.lock()
        .unwrap()
        .push(format!("{} {}", request.method(), request.uri().path()));
    next.run(request).await
}

async fn echo(method: Method, headers: HeaderMap, body: Bytes) -> axum::Json<Value> {
    let headers: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    axum::Json(json!({
        "method": method.as_str(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    }))
}

async fn redirect(Query(query): Query<BTreeMap<String, String>>) -> Response {
    let status = query
        .get("status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(302);
    let mut response = StatusCode::from_u16(status).unwrap().into_response();
    response
        .headers_mut()
        .insert(header::LOCATION, query["to"].parse().unwrap());
    response
}

async fn status(Path(code): Path<u16>) -> Response {
    (StatusCode::from_u16(code).unwrap(), "status body").into_response()
}

fn effects(tweak: impl FnOnce(&mut LiveConfig)) -> LiveEffects {
    install_crypto();
    let mut config = LiveConfig::new(&std::env::temp_dir());
    tweak(&mut config);
    live(config, Arc::new(StaticToken(AccessToken::new("unused"))))
}

async fn request(
    effects: &LiveEffects,
    hosts: &[&str],
    args: Value,
) -> Result<Value, zoomwire_engine::effects::EffectError> {
    perform(
        effects,
        &context_with_hosts(Duration::from_secs(10), hosts),
        "http.request",
        args,
    )
    .await
}

fn encode(url: &str) -> String {
    url::form_urlencoded::byte_serialize(url.as_bytes()).collect()
}

#[tokio::test]
async fn answers_status_headers_and_a_parsed_body() {
    let a = server().await;
    let fx = effects(|_| {});
    let answer = request(&fx, &["127.0.0.1:*"], json!({"url": a.url("/json")}))
        .await
        .unwrap();
    assert_eq!(answer["status"], 200);
    assert_eq!(answer["body"], json!({"hello": "world"}));
    assert_eq!(answer["headers"]["content-type"], "application/json");
    let answer = request(&fx, &["127.0.0.1:*"], json!({"url": a.url("/text")}))
        .await
        .unwrap();
    assert_eq!(answer["body"], "plain text");
    let answer = request(&fx, &["127.0.0.1:*"], json!({"url": a.url("/status/404")}))
        .await
        .unwrap();
    assert_eq!(answer["status"], 404, "any status is an answer");
    assert_eq!(answer["body"], "status body");
}

#[tokio::test]
async fn sends_method_headers_and_a_json_body() {
    let a = server().await;
    let fx = effects(|_| {});
    let answer = request(
        &fx,
        &["127.0.0.1:*"],
        json!({"method": "PUT", "url": a.url("/echo"),
               "headers": {"X-Custom": "yes"}, "body": {"n": 1}}),
    )
    .await
    .unwrap();
    assert_eq!(answer["body"]["method"], "PUT");
    assert_eq!(answer["body"]["headers"]["x-custom"], "yes");
    assert_eq!(
        answer["body"]["headers"]["content-type"],
        "application/json"
    );
    assert_eq!(answer["body"]["body"], r#"{"n":1}"#);
}

#[tokio::test]
async fn refuses_hosts_the_rule_does_not_allow_and_sends_nothing() {
    let a = server().await;
    let fx = effects(|_| {});
    let port = a.addr.port();
    for url in [
        format!("http://localhost:{port}/json"),
        format!("http://127.0.0.2:{port}/json"),
        format!("http://127.0.0.1@localhost:{port}/json"),
        format!("http://[::1]:{port}/json"),
    ] {
        let error = request(&fx, &["127.0.0.1:*"], json!({"url": url}))
            .await
            .unwrap_err();
        assert_eq!(error.kind, EffectErrorKind::Denied, "{url}: {error}");
    }
    let error = request(
        &fx,
        &["127.0.0.1:*"],
        json!({"url": format!("http://user:pw@127.0.0.1:{port}/json")}),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Permanent);
    assert!(!error.message.contains("pw"), "{}", error.message);
    assert!(a.seen().is_empty(), "{:?}", a.seen());
}

#[tokio::test]
async fn refuses_a_redirect_to_another_host() {
    let a = server().await;
    let b = server().await;
    let fx = effects(|_| {});
    let target = format!("http://localhost:{}/json", b.addr.port());
    let error = request(
        &fx,
        &["127.0.0.1:*"],
        json!({"url": a.url(&format!("/redirect?to={}", encode(&target)))}),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Denied);
    assert!(
        error
            .message
            .starts_with("redirect to host `localhost` is refused"),
        "{}",
        error.message
    );
    assert_eq!(a.seen(), ["GET /redirect"]);
    assert!(b.seen().is_empty());
}

#[tokio::test]
async fn follows_allowed_redirects_keeping_only_harmless_headers_across_origins() {
    let a = server().await;
    let b = server().await;
    let fx = effects(|_| {});
    let target = b.url("/echo");
    let answer = request(
        &fx,
        &["127.0.0.1:*"],
        json!({"url": a.url(&format!("/redirect?to={}", encode(&target))),
               "headers": {"Authorization": "Bearer abc", "X-Api-Key": "k-123",
                           "Cookie": "s=1", "X-Custom": "1", "Accept": "application/json"}}),
    )
    .await
    .unwrap();
    assert_eq!(answer["status"], 200);
    let headers = &answer["body"]["headers"];
    for dropped in ["authorization", "x-api-key", "cookie", "x-custom"] {
        assert!(headers.get(dropped).is_none(), "{dropped}: {headers}");
    }
    assert_eq!(
        headers["accept"], "application/json",
        "harmless ones are kept"
    );
    assert_eq!(b.seen(), ["GET /echo"]);

    // Same origin keeps it.
    let answer = request(
        &fx,
        &["127.0.0.1:*"],
        json!({"url": a.url("/redirect?to=/echo"),
               "headers": {"Authorization": "Bearer abc"}}),
    )
    .await
    .unwrap();
    assert_eq!(answer["body"]["headers"]["authorization"], "Bearer abc");
}

#[tokio::test]
async fn redirect_methods_follow_the_status() {
    let a = server().await;
    let fx = effects(|_| {});
    let post = |status: u16| {
        json!({"method": "POST", "url": a.url(&format!("/redirect?status={status}&to=/echo")),
               "body": "payload"})
    };
    let kept = request(&fx, &["127.0.0.1:*"], post(307)).await.unwrap();
    assert_eq!(kept["body"]["method"], "POST");
    assert_eq!(kept["body"]["body"], "payload");
    let changed = request(&fx, &["127.0.0.1:*"], post(303)).await.unwrap();
    assert_eq!(changed["body"]["method"], "GET");
    assert_eq!(changed["body"]["body"], "");
}

#[tokio::test]
async fn stops_a_redirect_loop() {
    let a = server().await;
    let fx = effects(|config| config.limits.max_redirects = 3);
    let error = request(&fx, &["127.0.0.1:*"], json!({"url": a.url("/loop")}))
        .await
        .unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Permanent);
    assert_eq!(error.message, "more than 3 redirects");
    assert_eq!(a.seen().len(), 4, "the first request and three redirects");
}

#[tokio::test]
async fn caps_the_response_size_and_the_time() {
    let a = server().await;
    let fx = effects(|config| config.limits.max_response_bytes = 10_000);
    let error = request(&fx, &["127.0.0.1:*"], json!({"url": a.url("/big")}))
        .await
        .unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Permanent);
    assert_eq!(
        error.message,
        "the response body is larger than the 10000 byte limit"
    );
    let started = Instant::now();
    let error = request(
        &fx,
        &["127.0.0.1:*"],
        json!({"url": a.url("/slow"), "timeout": 0.3}),
    )
    .await
    .unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(error.kind, EffectErrorKind::Transient);
    assert!(error.message.contains("timed out"), "{}", error.message);
}

#[tokio::test]
async fn refuses_an_oversized_request_body() {
    let a = server().await;
    let fx = effects(|config| config.limits.max_request_bytes = 10);
    let error = request(
        &fx,
        &["127.0.0.1:*"],
        json!({"method": "POST", "url": a.url("/echo"), "body": "01234567890"}),
    )
    .await
    .unwrap_err();
    assert_eq!(
        error.message,
        "the request body is larger than the 10 byte limit"
    );
    assert!(a.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_checks_the_rules_hosts_too() {
    let a = server().await;
    let fx: Arc<dyn zoomwire_engine::effects::Effects> = Arc::new(effects(|_| {}));
    let capabilities = CapabilitySet::new([Capability::Http("127.0.0.1:*".into())]);
    let gateway = RunEffects::new(
        zoomwire_engine::effects::EffectContext {
            http_hosts: capabilities.http_hosts(),
            ..crate::support::context(Duration::from_secs(10))
        },
        capabilities,
        fx,
        tokio::runtime::Handle::current(),
    );
    let json_url = a.url("/json");
    let other = format!("http://localhost:{}/json", a.addr.port());
    let (allowed, refused) = tokio::task::spawn_blocking(move || {
        (
            gateway.call("http.request", json!({"url": json_url})),
            gateway.call("http.request", json!({"url": other})),
        )
    })
    .await
    .unwrap();
    assert_eq!(allowed.unwrap()["body"]["hello"], "world");
    assert_eq!(refused.unwrap_err().kind, EffectErrorKind::Denied);
    assert_eq!(a.seen(), ["GET /json"]);
}

#[tokio::test]
async fn a_name_that_resolves_to_loopback_needs_the_address_itself_allowed() {
    let a = server().await;
    let fx = effects(|_| {});
    let url = format!("http://localhost:{}/json", a.addr.port());
    let error = request(&fx, &["localhost:*"], json!({"url": url}))
        .await
        .unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Denied, "{error}");
    assert!(
        error
            .message
            .starts_with("host `localhost` resolves only to addresses scripts may not reach"),
        "{}",
        error.message
    );
    assert!(error.message.contains("(loopback)"), "{}", error.message);
    assert!(a.seen().is_empty());
    // Naming the address is the explicit choice to reach it.
    let answer = request(
        &fx,
        &["localhost:*", "127.0.0.1", "[::1]"],
        json!({"url": url}),
    )
    .await
    .unwrap();
    assert_eq!(answer["body"]["hello"], "world");
}

#[tokio::test]
async fn a_host_is_allowed_on_ports_80_and_443_unless_the_rule_names_another() {
    let a = server().await;
    let fx = effects(|_| {});
    let error = request(&fx, &["127.0.0.1"], json!({"url": a.url("/json")}))
        .await
        .unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Denied);
    let port = a.addr.port();
    assert!(
        error
            .message
            .contains(&format!("allow this one with http:127.0.0.1:{port}")),
        "{}",
        error.message
    );
    let named = format!("127.0.0.1:{port}");
    let answer = request(&fx, &[named.as_str()], json!({"url": a.url("/json")}))
        .await
        .unwrap();
    assert_eq!(answer["status"], 200);
    assert_eq!(a.seen(), ["GET /json"]);
}

#[tokio::test]
async fn refuses_a_redirect_from_https_to_http() {
    let plain = server().await;
    let certs = crate::support::smtp::make_certificates();
    let tls = zoomwire_sim::sim::SimTls::from_files(
        &certs.path().join("server.pem"),
        &certs.path().join("server.key"),
    )
    .unwrap();
    let target = plain.url("/json");
    let app = Router::new().route(
        "/go",
        get(move || {
            let target = target.clone();
            async move { (StatusCode::FOUND, [(header::LOCATION, target)]) }
        }),
    );
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener = zoomwire_sim::sim::tls::TlsListener::new(tcp, &tls).unwrap();
    let addr = axum::serve::Listener::local_addr(&listener).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let ca = certs.path().join("ca.pem");
    let fx = effects(|config| config.ca_file = Some(ca));
    let error = request(
        &fx,
        &["127.0.0.1:*"],
        json!({"url": format!("https://{addr}/go"), "headers": {"Authorization": "Bearer abc"}}),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Permanent);
    assert_eq!(
        error.message,
        "answered 302 Found with a redirect from https to http, which is refused"
    );
    assert!(plain.seen().is_empty());
}
