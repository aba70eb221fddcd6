//! The webhook endpoint over loopback, as Zoom would call it: signatures
//! good, bad and stale, the URL challenge (with the published test vector),
//! body size and malformed bodies, and events arriving on the channel
//! without the answer waiting for the engine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use zoomwire_engine::event::{Event, Source};
use zoomwire_engine::serve::serve_router;
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
    url: String,
    events: mpsc::Receiver<Event>,
    client: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An endpoint whose clock says it is the vector's time plus 10 seconds.
async fn endpoint(queue: usize) -> Endpoint {
    let (sender, events) = mpsc::channel(queue);
    let clock = Arc::new(|| VECTOR_TIMESTAMP + 10);
    let router = webhook_router_with_clock(SecretString::from(SECRET), sender, BODY_LIMIT, clock);
    let shutdown = CancellationToken::new();
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (addr, _task) = serve_router("webhook", loopback, router, shutdown.clone())
        .await
        .unwrap();
    Endpoint {
        url: format!("http://{addr}/zoom/webhook"),
        events,
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
            self.events.try_recv().is_err(),
            "no event should have been queued"
        );
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
    let mut endpoint = endpoint(4).await;
    let body = meeting_started(1);
    let response = endpoint.post_signed(VECTOR_TIMESTAMP, &body).await;
    assert_eq!(response.status(), 200);
    let event = tokio::time::timeout(Duration::from_secs(5), endpoint.events.recv())
        .await
        .expect("the event arrives")
        .expect("the channel is open");
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
    let mut endpoint = endpoint(1).await;
    assert_eq!(
        endpoint
            .post_signed(VECTOR_TIMESTAMP, &meeting_started(4))
            .await
            .status(),
        200
    );
    let response = endpoint
        .post_signed(VECTOR_TIMESTAMP, &meeting_started(5))
        .await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "60");
    // Once the engine catches up, the retry is accepted.
    assert_eq!(endpoint.events.recv().await.unwrap().ts, 1_732_030_000_004);
    assert_eq!(
        endpoint
            .post_signed(VECTOR_TIMESTAMP, &meeting_started(5))
            .await
            .status(),
        200
    );
    assert_eq!(endpoint.events.recv().await.unwrap().ts, 1_732_030_000_005);
}

#[tokio::test]
async fn a_closed_queue_answers_503() {
    let mut endpoint = endpoint(4).await;
    endpoint.events.close();
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
