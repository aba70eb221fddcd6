//! Simulated recording downloads: `GET /rec/download/{file}` checks the
//! `download_token` (Bearer header or `?access_token=`; an OAuth access token
//! works too) and answers a 302 to a signed `/rec/stream/{file}` URL, as
//! Zoom's redirect to its storage does; that URL streams the file.
//!
//! File bytes are generated on the fly from their offset ([`download_byte`]),
//! so a many-gigabyte file costs no memory and a client can verify what it
//! saved. `Content-Length` is always set and `Range: bytes=a-b` is honoured.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::oauth::TokenCheck;
use super::state::{SimState, lock};

/// Bytes per streamed chunk.
const CHUNK: usize = 64 * 1024;
/// The pattern's period: a prime, so chunk boundaries do not line up with it.
const PERIOD: u64 = 251;

pub(crate) fn routes() -> Router<Arc<SimState>> {
    Router::new()
        .route("/rec/download/{file_id}", get(download))
        .route("/rec/stream/{file_id}", get(stream))
}

/// The byte at `offset` of every simulated file.
pub fn download_byte(offset: u64) -> u8 {
    (offset % PERIOD) as u8
}

/// `PERIOD + CHUNK` pattern bytes: any chunk is a zero-copy slice of it.
fn pattern() -> &'static Bytes {
    static PATTERN: OnceLock<Bytes> = OnceLock::new();
    PATTERN.get_or_init(|| {
        (0..(PERIOD as usize + CHUNK) as u64)
            .map(download_byte)
            .collect::<Vec<u8>>()
            .into()
    })
}

/// The bytes `start..end` of a simulated file, as a stream of chunks.
fn pattern_stream(
    start: u64,
    end: u64,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    futures_util::stream::unfold(start, move |offset| async move {
        if offset >= end {
            return None;
        }
        let len = (end - offset).min(CHUNK as u64) as usize;
        let from = (offset % PERIOD) as usize;
        Some((Ok(pattern().slice(from..from + len)), offset + len as u64))
    })
}

#[derive(Debug, Deserialize)]
struct DownloadQuery {
    access_token: Option<String>,
    signature: Option<String>,
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({ "code": 124, "message": "Invalid access token." })),
    )
        .into_response()
}

fn file_not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({ "code": 3301, "message": "This recording does not exist." })),
    )
        .into_response()
}

impl SimState {
    fn download_authorised(&self, headers: &HeaderMap, query_token: Option<&str>) -> bool {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        [bearer, query_token].into_iter().flatten().any(|token| {
            token == self.config.download_token
                || matches!(self.check_token(token), TokenCheck::Valid(_))
        })
    }

    fn stream_signature(&self, file_id: &str) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.stream_key.as_bytes());
        hasher.update(b":");
        hasher.update(file_id.as_bytes());
        hex::encode(hasher.finalize())
    }
}

async fn download(
    State(sim): State<Arc<SimState>>,
    Path(file_id): Path<String>,
    Query(query): Query<DownloadQuery>,
    headers: HeaderMap,
) -> Response {
    if !sim.download_authorised(&headers, query.access_token.as_deref()) {
        return unauthorized();
    }
    if !lock(&sim.downloads).contains_key(&file_id) {
        return file_not_found();
    }
    let encoded: String = url::form_urlencoded::byte_serialize(file_id.as_bytes()).collect();
    let location = format!(
        "{}/rec/stream/{encoded}?signature={}",
        sim.files_base_url,
        sim.stream_signature(&file_id)
    );
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// `Range: bytes=a-b` or `bytes=a-` within a file of `size` bytes.
fn parse_range(value: &str, size: u64) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    let (start, end) = spec.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end = match end.trim() {
        "" => size.checked_sub(1)?,
        end => end.parse::<u64>().ok()?.min(size.checked_sub(1)?),
    };
    (start <= end).then_some((start, end + 1))
}

async fn stream(
    State(sim): State<Arc<SimState>>,
    Path(file_id): Path<String>,
    Query(query): Query<DownloadQuery>,
    headers: HeaderMap,
) -> Response {
    let signed = query
        .signature
        .as_deref()
        .is_some_and(|s| s == sim.stream_signature(&file_id));
    if !signed {
        return (StatusCode::FORBIDDEN, "signature does not match").into_response();
    }
    let Some(size) = lock(&sim.downloads).get(&file_id).copied() else {
        return file_not_found();
    };
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, size),
        Some(range) => match parse_range(range, size) {
            Some((start, end)) => (StatusCode::PARTIAL_CONTENT, start, end),
            None => {
                let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    response.headers_mut().insert(header::CONTENT_RANGE, value);
                }
                return response;
            }
        },
    };
    let mut response = Response::new(Body::from_stream(pattern_stream(start, end)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(value) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1))
    {
        headers.insert(header::CONTENT_RANGE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-99", 1000), Some((0, 100)));
        assert_eq!(parse_range("bytes=900-", 1000), Some((900, 1000)));
        assert_eq!(parse_range("bytes=900-5000", 1000), Some((900, 1000)));
        assert_eq!(parse_range("bytes=1000-", 1000), None);
        assert_eq!(parse_range("items=1-2", 1000), None);
    }

    #[tokio::test]
    async fn the_stream_yields_the_pattern_at_every_offset() {
        let start = 1000;
        let end = start + 3 * CHUNK as u64 + 17;
        let chunks: Vec<Bytes> = pattern_stream(start, end)
            .map(|c| c.unwrap_or_default())
            .collect()
            .await;
        let bytes: Vec<u8> = chunks.concat();
        assert_eq!(bytes.len() as u64, end - start);
        for (i, byte) in bytes.iter().enumerate() {
            assert_eq!(*byte, download_byte(start + i as u64), "offset {i}");
        }
    }
}
