//! `zoom.download` end to end against the simulator's recording downloads
//! (a 302 to a signed stream URL, over TLS): the download token and the
//! OAuth fallback, the bytes that land in the archive (owner-only), size
//! checks and the download cap, retries, and every refusal: path escapes,
//! symlinks, hosts, redirects, and plain http for a token.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{context, live, live_config, oauth, perform, start_sim, start_sim_tls};
use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use secrecy::SecretString;
use serde_json::{Value, json};
use zoomwire_engine::effects::live::LiveEffects;
use zoomwire_engine::effects::{EffectContext, EffectError, EffectErrorKind};
use zoomwire_sim::sim::download::download_byte;
use zoomwire_sim::sim::{Fault, SimHandle, data};

struct Setup {
    sim: SimHandle,
    effects: LiveEffects,
    archive: tempfile::TempDir,
    /// The test CA and the server certificate the simulator's TLS port uses.
    certs: tempfile::TempDir,
}

async fn setup_with(tweak: impl FnOnce(&mut zoomwire_engine::effects::live::LiveConfig)) -> Setup {
    let (sim, certs) = start_sim_tls().await;
    let archive = tempfile::tempdir().unwrap();
    let mut config = live_config(&sim, archive.path());
    config.ca_file = Some(certs.path().join("ca.pem"));
    tweak(&mut config);
    let effects = live(config, oauth(&sim));
    Setup {
        sim,
        effects,
        archive,
        certs,
    }
}

/// A server for `app` over TLS with the test certificate: `https://127.0.0.1:PORT`.
async fn tls_host(app: Router, certs: &Path) -> String {
    let tls =
        zoomwire_sim::sim::SimTls::from_files(&certs.join("server.pem"), &certs.join("server.key"))
            .unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener = zoomwire_sim::sim::tls::TlsListener::new(tcp, &tls).unwrap();
    let addr = axum::serve::Listener::local_addr(&listener).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("https://{addr}")
}

async fn setup() -> Setup {
    setup_with(|_| {}).await
}

fn with_download_token(token: &str) -> EffectContext {
    EffectContext {
        download_token: Some(Arc::new(SecretString::from(token.to_string()))),
        ..context(Duration::from_secs(30))
    }
}

async fn download(
    s: &Setup,
    ctx: &EffectContext,
    file: Value,
    dest: &str,
) -> Result<Value, EffectError> {
    perform(
        &s.effects,
        ctx,
        "zoom.download",
        json!({"file": file, "dest": dest}),
    )
    .await
}

/// (raw path, status) of the download requests the simulator served.
fn download_requests(sim: &SimHandle) -> Vec<(String, u16)> {
    sim.requests()
        .into_iter()
        .filter(|r| r.raw_path.starts_with("/rec/"))
        .map(|r| (r.raw_path, r.status))
        .collect()
}

fn assert_pattern(path: &Path, size: u64) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(bytes.len() as u64, size);
    for (offset, byte) in bytes.iter().enumerate() {
        assert_eq!(*byte, download_byte(offset as u64), "offset {offset}");
    }
}

/// The archive's folders on the way to `file` are 0700, the file 0600.
fn assert_owner_only(archive: &Path, file: &str) {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let mut path = archive.to_path_buf();
    let parts: Vec<&str> = file.split('/').collect();
    for folder in &parts[..parts.len() - 1] {
        path.push(folder);
        assert_eq!(mode(&path), 0o700, "{}", path.display());
    }
    assert_eq!(mode(&archive.join(file)), 0o600, "{file}");
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, base, out);
            } else {
                out.push(
                    path.strip_prefix(base)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[tokio::test]
async fn downloads_a_recording_file_with_the_events_download_token() {
    let s = setup().await;
    let event = s
        .sim
        .recording_completed_event(data::WEEKLY_SYNC_ID)
        .unwrap();
    let file = event["payload"]["object"]["recording_files"][0].clone();
    let size = file["file_size"].as_u64().unwrap();
    let ctx = with_download_token(event["download_token"].as_str().unwrap());
    let answer = download(&s, &ctx, file, "weekly/2024-11-19/meeting.mp4")
        .await
        .unwrap();
    assert_eq!(answer["bytes"], size);
    assert_eq!(answer["path"], "weekly/2024-11-19/meeting.mp4");
    assert_pattern(
        &s.archive.path().join("weekly/2024-11-19/meeting.mp4"),
        size,
    );
    assert_eq!(files(s.archive.path()), ["weekly/2024-11-19/meeting.mp4"]);
    assert_owner_only(s.archive.path(), "weekly/2024-11-19/meeting.mp4");
    let requests = download_requests(&s.sim);
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(requests[0].0.starts_with("/rec/download/"));
    assert_eq!(requests[0].1, 302);
    assert!(requests[1].0.starts_with("/rec/stream/"));
    assert_eq!(requests[1].1, 200);
}

#[tokio::test]
async fn downloads_a_url_with_the_oauth_token() {
    let s = setup().await;
    s.sim.add_download("extra-file", 100_000);
    let answer = download(
        &s,
        &context(Duration::from_secs(30)),
        json!(s.sim.download_url("extra-file")),
        "extra.bin",
    )
    .await
    .unwrap();
    assert_eq!(answer["bytes"], 100_000);
    assert_pattern(&s.archive.path().join("extra.bin"), 100_000);
}

#[tokio::test]
async fn falls_back_to_the_oauth_token_when_the_download_token_is_refused() {
    let s = setup().await;
    s.sim.add_download("f", 1000);
    let answer = download(
        &s,
        &with_download_token("expired-download-token"),
        json!({"download_url": s.sim.download_url("f"), "file_size": 1000}),
        "f.bin",
    )
    .await
    .unwrap();
    assert_eq!(answer["bytes"], 1000);
    let statuses: Vec<u16> = download_requests(&s.sim).into_iter().map(|r| r.1).collect();
    assert_eq!(statuses, [401, 302, 200]);
}

#[tokio::test]
async fn replaces_an_existing_file_whole() {
    let s = setup().await;
    s.sim.add_download("f", 5000);
    std::fs::write(s.archive.path().join("f.bin"), b"old contents").unwrap();
    download(
        &s,
        &context(Duration::from_secs(30)),
        json!(s.sim.download_url("f")),
        "f.bin",
    )
    .await
    .unwrap();
    assert_pattern(&s.archive.path().join("f.bin"), 5000);
}

#[tokio::test]
async fn retries_a_5xx_from_the_download_host() {
    let s = setup().await;
    s.sim.add_download("f", 1000);
    s.sim.inject_fault(Fault::status("/rec/stream/", 1, 503));
    download(
        &s,
        &context(Duration::from_secs(30)),
        json!(s.sim.download_url("f")),
        "f.bin",
    )
    .await
    .unwrap();
    let statuses: Vec<u16> = download_requests(&s.sim).into_iter().map(|r| r.1).collect();
    assert_eq!(statuses, [302, 503, 302, 200]);
}

#[tokio::test]
async fn refuses_a_size_that_differs_from_file_size_and_keeps_nothing() {
    let s = setup().await;
    s.sim.add_download("f", 1000);
    let error = download(
        &s,
        &context(Duration::from_secs(30)),
        json!({"download_url": s.sim.download_url("f"), "file_size": 999}),
        "f.bin",
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Permanent);
    assert_eq!(
        error.message,
        "the server announced 1000 bytes where `file_size` says 999"
    );
    assert!(files(s.archive.path()).is_empty());
}

#[tokio::test]
async fn refuses_files_over_the_download_limit_before_asking() {
    let s = setup_with(|config| config.limits.max_download_bytes = Some(500)).await;
    s.sim.add_download("f", 1000);
    let error = download(
        &s,
        &context(Duration::from_secs(30)),
        json!({"download_url": s.sim.download_url("f"), "file_size": 1000}),
        "f.bin",
    )
    .await
    .unwrap_err();
    assert_eq!(
        error.message,
        "the file is larger than the 500 byte download limit"
    );
    assert!(download_requests(&s.sim).is_empty());
    let error = download(
        &s,
        &context(Duration::from_secs(30)),
        json!(s.sim.download_url("f")),
        "f.bin",
    )
    .await
    .unwrap_err();
    assert_eq!(
        error.message,
        "the file is larger than the 500 byte download limit"
    );
    assert!(files(s.archive.path()).is_empty());
}

#[tokio::test]
async fn refuses_destinations_outside_the_archive_before_any_request() {
    let s = setup().await;
    s.sim.add_download("f", 1000);
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), s.archive.path().join("link")).unwrap();
    let absolute = outside
        .path()
        .join("abs.bin")
        .to_string_lossy()
        .into_owned();
    for (dest, message) in [
        (
            "../escape.bin",
            "the destination `../escape.bin` may not contain `..`",
        ),
        (
            "a/../../escape.bin",
            "the destination `a/../../escape.bin` may not contain `..`",
        ),
        (
            absolute.as_str(),
            &*format!("the destination `{absolute}` must be relative to the archive folder"),
        ),
        (
            "link/escape.bin",
            "the destination `link/escape.bin` passes through a symlink (`link`), which is refused",
        ),
        (
            "",
            "the destination must name a file inside the archive folder",
        ),
    ] {
        let error = download(
            &s,
            &context(Duration::from_secs(30)),
            json!(s.sim.download_url("f")),
            dest,
        )
        .await
        .unwrap_err();
        assert_eq!(error.kind, EffectErrorKind::Permanent, "{dest}");
        assert_eq!(error.message, message, "{dest}");
    }
    assert!(download_requests(&s.sim).is_empty());
    assert!(files(outside.path()).is_empty());
}

#[tokio::test]
async fn refuses_a_host_that_is_not_zoom() {
    let s = setup().await;
    s.sim.add_download("f", 1000);
    let url = s.sim.download_url("f").replace("127.0.0.1", "localhost");
    let error = download(&s, &context(Duration::from_secs(30)), json!(url), "f.bin")
        .await
        .unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Denied);
    assert!(
        error.message.starts_with("host `localhost` is refused"),
        "{}",
        error.message
    );
    assert!(download_requests(&s.sim).is_empty());
}

/// A download host (over TLS) that redirects to the simulator's stream
/// under another name, and remembers whether it was sent a token.
async fn redirecting_host(target: String, certs: &Path) -> (String, Arc<Mutex<Vec<bool>>>) {
    let authorised: Arc<Mutex<Vec<bool>>> = Arc::default();
    let seen = authorised.clone();
    let app = Router::new().route(
        "/rec/download/{file}",
        get(move |headers: HeaderMap| {
            let seen = seen.clone();
            let target = target.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .push(headers.contains_key(header::AUTHORIZATION));
                (StatusCode::FOUND, [(header::LOCATION, target)]).into_response()
            }
        }),
    );
    let base = tls_host(app, certs).await;
    (format!("{base}/rec/download/f"), authorised)
}

#[tokio::test]
async fn redirects_are_checked_and_tokens_stay_on_their_origin() {
    let s = setup().await;
    s.sim.add_download("f", 1000);
    // Where the simulator's own redirect would go, but named `localhost`.
    let ca = std::fs::read(s.certs.path().join("ca.pem")).unwrap();
    let location = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .tls_certs_merge([reqwest::Certificate::from_pem(&ca).unwrap()])
        .build()
        .unwrap()
        .get(s.sim.download_url("f"))
        .bearer_auth(s.sim.download_token())
        .send()
        .await
        .unwrap()
        .headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .replace("127.0.0.1", "localhost");
    let (url, authorised) = redirecting_host(location, s.certs.path()).await;
    let ctx = with_download_token(s.sim.download_token());

    let error = download(&s, &ctx, json!(url), "f.bin").await.unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Denied);
    assert!(
        error
            .message
            .starts_with("redirect to host `localhost` is refused"),
        "{}",
        error.message
    );
    assert_eq!(download_requests(&s.sim).len(), 1, "only the manual probe");

    // Allowed by the rule's `http:localhost:*`: followed, without the token.
    let ctx = EffectContext {
        http_hosts: Arc::from(vec!["localhost:*".to_string()]),
        ..ctx
    };
    let answer = download(&s, &ctx, json!(url), "f.bin").await.unwrap();
    assert_eq!(answer["bytes"], 1000);
    assert_eq!(*authorised.lock().unwrap(), [true, true]);
    let stream = s.sim.requests().pop().unwrap();
    assert!(stream.raw_path.starts_with("/rec/stream/"));
    assert_eq!(stream.auth, None, "no token crossed to another origin");
}

#[tokio::test]
async fn never_sends_a_token_over_plain_http() {
    // A simulator without TLS: its files are plain http URLs of a Zoom host.
    let sim = start_sim().await;
    let archive = tempfile::tempdir().unwrap();
    let effects = live(live_config(&sim, archive.path()), oauth(&sim));
    sim.add_download("f", 1000);
    let ctx = with_download_token(sim.download_token());
    let answer = perform(
        &effects,
        &ctx,
        "zoom.download",
        json!({"file": sim.download_url("f"), "dest": "f.bin"}),
    )
    .await;
    let error = answer.unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Permanent);
    assert_eq!(
        error.message,
        "the download url is plain http: zoomwire sends Zoom's download token only over https"
    );
    assert!(download_requests(&sim).is_empty(), "nothing was sent");
}

#[tokio::test]
async fn refuses_a_redirect_from_https_to_http() {
    let s = setup().await;
    s.sim.add_download("f", 1000);
    let plain = format!("{}/rec/stream/f", s.sim.base_url());
    let (url, authorised) = redirecting_host(plain, s.certs.path()).await;
    let ctx = with_download_token(s.sim.download_token());
    let error = download(&s, &ctx, json!(url), "f.bin").await.unwrap_err();
    assert_eq!(error.message, "a redirect from https to http is refused");
    assert_eq!(*authorised.lock().unwrap(), [true]);
    assert!(download_requests(&s.sim).is_empty());
    assert!(files(s.archive.path()).is_empty());
}

#[tokio::test]
async fn the_download_cap_stops_a_stream_that_announces_no_size() {
    let s = setup_with(|config| config.limits.max_download_bytes = Some(100_000)).await;
    // A Zoom host (the API's) streaming 300 kB in chunks, without Content-Length.
    let app = Router::new().route(
        "/rec/download/{file}",
        get(|| async {
            let chunks = futures_util::stream::iter(
                (0..30).map(|_| Ok::<_, std::io::Error>(vec![7u8; 10_000])),
            );
            axum::body::Body::from_stream(chunks)
        }),
    );
    let base = tls_host(app, s.certs.path()).await;
    let error = download(
        &s,
        &with_download_token(s.sim.download_token()),
        json!(format!("{base}/rec/download/f")),
        "f.bin",
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Permanent);
    assert_eq!(
        error.message,
        "the file is larger than the 100000 byte download limit"
    );
    assert!(
        files(s.archive.path()).is_empty(),
        "the partial file is gone"
    );
}
