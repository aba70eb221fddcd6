//! The webhook endpoint over loopback, as Zoom would call it: signatures
//! good, bad and stale, the URL challenge (with the published test vector),
//! body size and malformed bodies, and events arriving on the channel with
//! the answer waiting until the engine has journaled them (200), or 503 when
//! it cannot take them or does not in time; then the public server's
//! limits one by one (request rate, requests in flight, connections, body
//! time). The daemon under 2,000 slow clients is in `webhook_abuse.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use zoomwire_engine::event::{Event, Source};
use zoomwire_engine::serve::limits::EndpointLimits;
use zoomwire_engine::serve::public::serve_public;
use zoomwire_engine::zoom::webhook::{
    SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, webhook_router_with_clock,
};

const SECRET: &str = "test_secret_token";
/// The protocol notes' test vector.
const VECTOR_TIMESTAMP: i64 = 1_732_030_000;
const VECTOR_BODY: &str = r#"{"event":"endpoint.url_validation","event_ts":1732030000000,"payload":{"plainToken":"Xk2pQ7rT9vW4yZ1bN6mC8d"}}"#;
const VECTOR_SIGNATURE: &str =
    "v0=1d4a9ee3ce2444b3076309456f698c86a22ae2d7a8f91ef29cedf2ad775836d9";
const BODY_LIMIT: usize = 4096;

struct Endpoint {
    addr: SocketAddr,
    url: String,
    /// What the engine's intake reads (behind a lock, so that a test can
    /// post and journal at once).
    events: tokio::sync::Mutex<mpsc::Receiver<Event>>,
    client: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn limits() -> EndpointLimits {
    EndpointLimits {
        max_body: BODY_LIMIT,
        ..EndpointLimits::default()
    }
}

/// An endpoint whose clock says it is the vector's time plus 10 seconds;
/// the test takes (and journals) its events.
async fn endpoint(queue: usize) -> Endpoint {
    build(queue, limits()).await
}

/// An endpoint with these limits whose events are journaled as they come,
/// as the daemon's intake does.
async fn endpoint_with(queue: usize, limits: EndpointLimits) -> Arc<Endpoint> {
    let endpoint = Arc::new(build(queue, limits).await);
    tokio::spawn({
        // Ends with the test's runtime.
        let endpoint = endpoint.clone();
        async move {
            let mut events = endpoint.events.lock().await;
            while let Some(event) = events.recv().await {
                event.mark_journaled();
            }
        }
    });
    endpoint
}

async fn build(queue: usize, limits: EndpointLimits) -> Endpoint {
    let (sender, events) = mpsc::channel(queue);
    let clock = Arc::new(|| VECTOR_TIMESTAMP + 10);
    let router =
        webhook_router_with_clock(SecretString::from(SECRET), sender, limits.max_body, clock);
    let shutdown = CancellationToken::new();
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (addr, _task) = serve_public("webhook", loopback, router, &limits, None, shutdown.clone())
        .await
        .unwrap();
    Endpoint {
        addr,
        url: format!("http://{addr}/zoom/webhook"),
        events: tokio::sync::Mutex::new(events),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap(),
        shutdown,
    }
}

impl Endpoint {
    async fn post(&self, timestamp: i64, signature: Option<&str>, body: &str) -> reqwest::Response {
        let mut request = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .body(body.to_string());
        if let Some(signature) = signature {
            request = request.header(SIGNATURE_HEADER, signature);
        }
        request.send().await.unwrap()
    }

    async fn post_signed(&self, timestamp: i64, body: &str) -> reqwest::Response {
        let signature = sign(
            &SecretString::from(SECRET),
            &timestamp.to_string(),
            body.as_bytes(),
        );
        self.post(timestamp, Some(&signature), body).await
    }

    fn assert_no_event(&mut self) {
        assert!(
            self.events.get_mut().try_recv().is_err(),
            "no event should have been queued"
        );
    }

    /// Takes the next event as the engine's intake does and tells the
    /// endpoint it is journaled.
    async fn journal_next(&self) -> Event {
        let mut events = self.events.lock().await;
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("the event arrives")
            .expect("the channel is open");
        event.mark_journaled();
        event
    }

    /// Posts a signed event and journals it meanwhile.
    async fn post_journaled(&self, body: &str) -> (reqwest::Response, Event) {
        tokio::join!(
            self.post_signed(VECTOR_TIMESTAMP, body),
            self.journal_next()
        )
    }
}

fn meeting_started(id: u32) -> String {
    format!(
        r#"{{"event":"meeting.started","event_ts":1732030000{id:03},"payload":{{"account_id":"acc","object":{{"id":"{id}","uuid":"u{id}","topic":"Standup"}}}}}}"#
    )
}

#[tokio::test]
async fn answers_the_url_validation_vector() {
    let mut endpoint = endpoint(4).await;
    let response = endpoint
        .post(VECTOR_TIMESTAMP, Some(VECTOR_SIGNATURE), VECTOR_BODY)
        .await;
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        answer,
        serde_json::json!({
            "plainToken": "Xk2pQ7rT9vW4yZ1bN6mC8d",
            "encryptedToken": "cdaca8da91de38029cac406338475a1e67374e5c5cd02cfedbde42a1c03636b0",
        })
    );
    endpoint.assert_no_event();
}

#[tokio::test]
async fn a_signed_event_is_acknowledged_and_arrives_on_the_channel() {
    let endpoint = endpoint(4).await;
    let body = meeting_started(1);
    let (response, event) = endpoint.post_journaled(&body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(event.event_type, "meeting.started");
    assert_eq!(event.source, Source::Webhook);
    assert_eq!(&*event.raw, body.as_str());
}

#[tokio::test]
async fn bad_and_missing_signatures_are_401() {
    let mut endpoint = endpoint(4).await;
    let body = meeting_started(2);
    let forged = sign(
        &SecretString::from("not the secret"),
        &VECTOR_TIMESTAMP.to_string(),
        body.as_bytes(),
    );
    assert_eq!(
        endpoint
            .post(VECTOR_TIMESTAMP, Some(&forged), &body)
            .await
            .status(),
        401
    );
    // The vector's signature over another body.
    assert_eq!(
        endpoint
            .post(VECTOR_TIMESTAMP, Some(VECTOR_SIGNATURE), &body)
            .await
            .status(),
        401
    );
    assert_eq!(
        endpoint.post(VECTOR_TIMESTAMP, None, &body).await.status(),
        401
    );
    endpoint.assert_no_event();
}

#[tokio::test]
async fn stale_timestamps_are_401_even_when_signed() {
    let mut endpoint = endpoint(4).await;
    let body = meeting_started(3);
    let response = endpoint.post_signed(VECTOR_TIMESTAMP - 600, &body).await;
    assert_eq!(response.status(), 401);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .starts_with("timestamp is 610 s away")
    );
    assert_eq!(
        endpoint
            .post_signed(VECTOR_TIMESTAMP + 3600, &body)
            .await
            .status(),
        401
    );
    endpoint.assert_no_event();
}

#[tokio::test]
async fn an_oversized_body_is_413() {
    let mut endpoint = endpoint(4).await;
    let padding = "x".repeat(BODY_LIMIT);
    let body = format!(r#"{{"event":"meeting.started","payload":{{"pad":"{padding}"}}}}"#);
    assert_eq!(
        endpoint.post_signed(VECTOR_TIMESTAMP, &body).await.status(),
        413
    );
    endpoint.assert_no_event();
}

#[tokio::test]
async fn a_signed_malformed_body_is_400() {
    let mut endpoint = endpoint(4).await;
    assert_eq!(
        endpoint
            .post_signed(VECTOR_TIMESTAMP, "{not json")
            .await
            .status(),
        400
    );
    assert_eq!(
        endpoint
            .post_signed(VECTOR_TIMESTAMP, r#"{"payload":{}}"#)
            .await
            .status(),
        400
    );
    endpoint.assert_no_event();
}

#[tokio::test]
async fn a_full_queue_answers_503_so_zoom_retries() {
    let endpoint = Arc::new(endpoint(1).await);
    // The first waits in the queue for the engine to journal it...
    let first = tokio::spawn({
        let endpoint = endpoint.clone();
        async move {
            endpoint
                .post_signed(VECTOR_TIMESTAMP, &meeting_started(4))
                .await
                .status()
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...so the second finds the queue full.
    let response = endpoint
        .post_signed(VECTOR_TIMESTAMP, &meeting_started(5))
        .await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "60");
    // Once the engine catches up, the first is answered and the retry accepted.
    assert_eq!(endpoint.journal_next().await.ts, 1_732_030_000_004);
    assert_eq!(first.await.unwrap(), 200);
    let (retry, event) = endpoint.post_journaled(&meeting_started(5)).await;
    assert_eq!(retry.status(), 200);
    assert_eq!(event.ts, 1_732_030_000_005);
}

#[tokio::test]
async fn an_event_not_journaled_in_time_answers_503_and_is_still_queued() {
    // A 200 promises the event is kept: one that may not be is refused, so
    // Zoom sends it again (the journal drops the duplicate if it was kept).
    let endpoint = endpoint(4).await;
    let started = std::time::Instant::now();
    let response = endpoint
        .post_signed(VECTOR_TIMESTAMP, &meeting_started(7))
        .await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.text().await.unwrap(), "not journaled in time");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
        "answered within Zoom's 3 seconds: {waited:?}"
    );
    assert_eq!(endpoint.journal_next().await.ts, 1_732_030_000_007);
}

#[tokio::test]
async fn a_closed_queue_answers_503() {
    let endpoint = endpoint(4).await;
    endpoint.events.lock().await.close();
    assert_eq!(
        endpoint
            .post_signed(VECTOR_TIMESTAMP, &meeting_started(6))
            .await
            .status(),
        503
    );
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let endpoint = endpoint(4).await;
    endpoint.shutdown.cancel();
    let mut refused = false;
    for _ in 0..50 {
        if endpoint.client.post(&endpoint.url).send().await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the server still answers after shutdown");
}

/// A connection that sent a complete head for a body it sends slowly.
async fn slow_body(addr: SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = "POST /zoom/webhook HTTP/1.1\r\nHost: zoomwire\r\nContent-Length: 100\r\n\r\n{";
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Everything the server sends until it closes the connection.
async fn read_to_close(mut stream: tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn an_address_past_its_rate_gets_429_with_retry_after() {
    let endpoint = endpoint_with(
        64,
        EndpointLimits {
            per_address_rate: 1,
            per_address_burst: 3,
            ..limits()
        },
    )
    .await;
    for n in 0..3 {
        let status = endpoint
            .post_signed(VECTOR_TIMESTAMP, &meeting_started(10 + n))
            .await
            .status();
        assert_eq!(status, 200);
    }
    let refused = endpoint
        .post_signed(VECTOR_TIMESTAMP, &meeting_started(13))
        .await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
}

#[tokio::test]
async fn requests_beyond_max_requests_in_flight_are_shed_with_503() {
    let endpoint = endpoint_with(
        64,
        EndpointLimits {
            max_requests: 2,
            ..limits()
        },
    )
    .await;
    // Two requests reading their bodies hold both places.
    let held = [
        slow_body(endpoint.addr).await,
        slow_body(endpoint.addr).await,
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let shed = endpoint
        .post_signed(VECTOR_TIMESTAMP, &meeting_started(20))
        .await;
    assert_eq!(shed.status(), 503);
    assert!(shed.headers().contains_key("retry-after"));
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = endpoint
        .post_signed(VECTOR_TIMESTAMP, &meeting_started(21))
        .await
        .status();
    assert_eq!(status, 200, "the places came back when they closed");
}

#[tokio::test]
async fn a_body_slower_than_body_timeout_gets_408_and_is_closed() {
    let endpoint = endpoint_with(
        64,
        EndpointLimits {
            body_timeout: Duration::from_millis(300),
            ..limits()
        },
    )
    .await;
    let started = std::time::Instant::now();
    let answer = read_to_close(slow_body(endpoint.addr).await).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("the body did not arrive within"),
        "{answer}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_head_slower_than_header_timeout_is_closed() {
    use tokio::io::AsyncWriteExt;
    let endpoint = endpoint_with(
        64,
        EndpointLimits {
            header_timeout: Duration::from_millis(300),
            ..limits()
        },
    )
    .await;
    let started = std::time::Instant::now();
    let mut stream = tokio::net::TcpStream::connect(endpoint.addr).await.unwrap();
    stream
        .write_all(b"POST /zoom/webhook HTTP/1.1\r\nHo")
        .await
        .unwrap();
    read_to_close(stream).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    // An idle connection too.
    let started = std::time::Instant::now();
    read_to_close(tokio::net::TcpStream::connect(endpoint.addr).await.unwrap()).await;
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_at_once() {
    let endpoint = endpoint_with(
        64,
        EndpointLimits {
            max_connections: 3,
            ..limits()
        },
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(endpoint.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let extra = tokio::net::TcpStream::connect(endpoint.addr).await.unwrap();
    assert_eq!(read_to_close(extra).await, "", "closed without an answer");
    assert!(started.elapsed() < Duration::from_secs(1));
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = endpoint
        .post_signed(VECTOR_TIMESTAMP, &meeting_started(30))
        .await
        .status();
    assert_eq!(status, 200);
}
