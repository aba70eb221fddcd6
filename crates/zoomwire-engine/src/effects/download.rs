//! `zoom::download(file_or_url, relative_dest)`: streams a recording file
//! into the archive folder.
//!
//! `file` is a URL or a recording-file map (`download_url`, `file_size`).
//! The request carries the event's `download_token` (or, without one or when
//! it is refused, the OAuth token of the run's own account, never another
//! account's) only to a Zoom host, only over https, and only while redirects
//! stay on the same origin: a plain `http://` URL of a Zoom host is refused
//! rather than sent a token, and so is a redirect from https to http.
//! Redirects are followed one hop at a time, each target checked against
//! the Zoom hosts and the rule's `http:<host>` list. The body is streamed
//! chunk by chunk into a temporary file beside the destination, checked
//! against `file_size` and the size cap (`max_bytes`, also when nothing
//! announces a size), synced and renamed into place, so memory stays flat
//! and a half-written file never carries the final name. The destination
//! is a relative path inside the archive folder: `..`, absolute paths and
//! symlinks on the way are refused. Folders are made 0700 and files 0600:
//! recordings are their owner's only.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, LOCATION};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use url::Url;

use super::capability::{host_allowed, target_allowed};
use super::{EffectContext, EffectError, EffectErrorKind, EffectName};
use crate::http_retry::{
    self, Attempt, Exchange, PastDeadline, RetryPolicy, describe_error, read_body_capped,
    send_with_retry,
};
use crate::zoom::token::{AccessToken, AccessTokens};

const EFFECT: &str = EffectName::ZoomDownload.as_str();

/// Suffix of the temporary file a download is written to before its rename.
pub const PARTIAL_SUFFIX: &str = ".zoomwire-part";

/// Hosts Zoom serves recordings from; the API base's host is added to these.
pub const DEFAULT_ZOOM_HOSTS: &[&str] = &[
    "zoom.us",
    "*.zoom.us",
    "zoom.com",
    "*.zoom.com",
    "zoomgov.com",
    "*.zoomgov.com",
];

/// Settings of the downloader.
#[derive(Debug, Clone)]
pub struct DownloadConfig {
    /// Everything is written under this folder (`$ZOOMWIRE_DATA/archive`).
    pub archive_dir: PathBuf,
    /// Hosts that get the download or OAuth token.
    pub zoom_hosts: Vec<String>,
    /// Refuse files larger than this, whatever `file_size` says.
    pub max_bytes: Option<u64>,
    pub max_redirects: u32,
    pub retry: RetryPolicy,
}

/// A destination that would leave the archive folder, or cannot be written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DestError {
    #[error("the destination must name a file inside the archive folder")]
    Empty,
    #[error("the destination `{0}` must be relative to the archive folder")]
    Absolute(String),
    #[error("the destination `{0}` may not contain `..`")]
    ParentDir(String),
    #[error("the destination `{0}` passes through a symlink (`{1}`), which is refused")]
    Symlink(String, String),
    #[error("the destination `{0}`: `{1}` is not a folder")]
    NotAFolder(String, String),
    #[error("the destination `{0}` is a folder, not a file")]
    IsAFolder(String),
    #[error("the destination `{0}` may not end with `{PARTIAL_SUFFIX}`")]
    Reserved(String),
    #[error("the destination `{0}` contains a NUL character")]
    Nul(String),
    #[error("the archive folder: {0}")]
    Io(String),
}

/// A checked destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Destination {
    /// The normalised relative path, with `/` separators.
    pub relative: String,
    pub path: PathBuf,
}

/// Checks `relative` and creates its folders under `root`; nothing is
/// created outside `root`. Backslashes count as separators.
pub fn prepare_destination(root: &Path, relative: &str) -> Result<Destination, DestError> {
    let parts = relative_parts(relative)?;
    let io = |e: std::io::Error| DestError::Io(e.to_string());
    crate::private_fs::create_dir_all(root).map_err(io)?;
    // An archive made by an older zoomwire was world-readable.
    crate::private_fs::restrict_dir(root);
    let root = root.canonicalize().map_err(io)?;
    let (file_name, folders) = parts.split_last().ok_or(DestError::Empty)?;
    let mut folder = root;
    for (index, part) in folders.iter().enumerate() {
        folder.push(part);
        let so_far = parts[..=index].join("/");
        ensure_folder(&folder, relative, &so_far)?;
    }
    let path = folder.join(file_name);
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(DestError::Symlink(relative.into(), parts.join("/")));
        }
        Ok(meta) if meta.is_dir() => return Err(DestError::IsAFolder(relative.into())),
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    Ok(Destination {
        relative: parts.join("/"),
        path,
    })
}

fn relative_parts(relative: &str) -> Result<Vec<&str>, DestError> {
    if relative.contains('\0') {
        return Err(DestError::Nul(relative.into()));
    }
    let has_drive = relative.as_bytes().get(1) == Some(&b':');
    if relative.starts_with(['/', '\\']) || Path::new(relative).is_absolute() || has_drive {
        return Err(DestError::Absolute(relative.into()));
    }
    let mut parts = Vec::new();
    for part in relative.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return Err(DestError::ParentDir(relative.into())),
            name => parts.push(name),
        }
    }
    if parts.is_empty() || relative.ends_with(['/', '\\']) {
        return Err(DestError::Empty);
    }
    if parts
        .last()
        .is_some_and(|name| name.ends_with(PARTIAL_SUFFIX))
    {
        return Err(DestError::Reserved(relative.into()));
    }
    Ok(parts)
}

fn ensure_folder(folder: &Path, relative: &str, so_far: &str) -> Result<(), DestError> {
    match std::fs::symlink_metadata(folder) {
        Ok(meta) if meta.file_type().is_symlink() => {
            Err(DestError::Symlink(relative.into(), so_far.into()))
        }
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(DestError::NotAFolder(relative.into(), so_far.into())),
        Err(e) if e.kind() == ErrorKind::NotFound => match crate::private_fs::create_dir(folder) {
            Ok(()) => Ok(()),
            // Created meanwhile by a parallel download: check what it is.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                ensure_folder(folder, relative, so_far)
            }
            Err(e) => Err(DestError::Io(e.to_string())),
        },
        Err(e) => Err(DestError::Io(e.to_string())),
    }
}

/// What to fetch.
#[derive(Debug, Clone, PartialEq)]
struct Source {
    url: Url,
    expected_size: Option<u64>,
}

fn parse_source(file: &Value) -> Result<Source, EffectError> {
    let bad = |message: &str| EffectError::permanent(EFFECT, message);
    let (url_text, expected_size) = match file {
        Value::String(url) => (url.as_str(), None),
        Value::Object(map) => {
            let url = map
                .get("download_url")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("the recording file has no `download_url` string"))?;
            let size = match map.get("file_size") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => n.as_u64(),
                Some(Value::String(s)) => s.trim().parse().ok(),
                Some(_) => None,
            };
            (url, size)
        }
        _ => return Err(bad("`file` must be a url or a recording file map")),
    };
    let url = Url::parse(url_text)
        .map_err(|e| EffectError::permanent(EFFECT, format!("the download url is invalid: {e}")))?;
    Ok(Source { url, expected_size })
}

/// Which credential a request carries.
#[derive(Clone)]
enum Credential {
    DownloadToken(Arc<secrecy::SecretString>),
    OAuth(AccessToken),
}

impl Credential {
    fn bearer(&self) -> &str {
        match self {
            Credential::DownloadToken(token) => token.expose_secret(),
            Credential::OAuth(token) => token.expose(),
        }
    }
}

/// The OAuth token source of the run's account, or why there is none (the
/// error is returned only if the download token alone does not do).
pub type OAuthFallback = Result<Arc<dyn AccessTokens>, EffectError>;

/// The `zoom.download` effect.
pub struct Downloader {
    client: reqwest::Client,
    config: DownloadConfig,
}

impl Downloader {
    /// `client` must not follow redirects on its own and should have a read
    /// timeout (a stalled transfer) but no overall one.
    pub fn new(client: reqwest::Client, config: DownloadConfig) -> Downloader {
        Downloader { client, config }
    }

    pub fn archive_dir(&self) -> &Path {
        &self.config.archive_dir
    }

    pub async fn download(
        &self,
        context: &EffectContext,
        args: &Value,
        oauth: &OAuthFallback,
    ) -> Result<Value, EffectError> {
        let source = parse_source(args.get("file").unwrap_or(&Value::Null))?;
        let dest_text = args
            .get("dest")
            .and_then(Value::as_str)
            .ok_or_else(|| EffectError::permanent(EFFECT, "`dest` must be a relative path"))?
            .to_string();
        self.check_url(&source.url, context, false)?;
        if source.url.scheme() != "https"
            && host_allowed(
                &self.config.zoom_hosts,
                source.url.host_str().unwrap_or_default(),
            )
        {
            return Err(EffectError::permanent(
                EFFECT,
                "the download url is plain http: zoomwire sends Zoom's download token only over https",
            ));
        }
        if let (Some(max), Some(size)) = (self.config.max_bytes, source.expected_size)
            && size > max
        {
            return Err(too_large(max));
        }
        let root = self.config.archive_dir.clone();
        let destination =
            tokio::task::spawn_blocking(move || prepare_destination(&root, &dest_text))
                .await
                .map_err(|e| EffectError::transient(EFFECT, e.to_string()))?
                .map_err(|e| EffectError::permanent(EFFECT, e.to_string()))?;
        let response = self.fetch_with_retries(&source.url, context, oauth).await?;
        let bytes = self
            .stream_to_file(response, &destination.path, source.expected_size)
            .await?;
        metrics::counter!("zoomwire_download_bytes_total").increment(bytes);
        tracing::info!(rule = %context.rule, dest = %destination.relative, bytes, "recording downloaded");
        Ok(json!({
            "path": destination.relative,
            "file": destination.path.to_string_lossy(),
            "bytes": bytes,
        }))
    }

    /// Refuses a URL outside the Zoom hosts and the rule's `http:` hosts.
    fn check_url(
        &self,
        url: &Url,
        context: &EffectContext,
        redirected: bool,
    ) -> Result<(), EffectError> {
        let prefix = if redirected { "redirect to " } else { "" };
        if !matches!(url.scheme(), "http" | "https") {
            return Err(EffectError::permanent(
                EFFECT,
                format!("{prefix}scheme `{}` is refused", url.scheme()),
            ));
        }
        let host = url.host_str().unwrap_or_default();
        let port = url.port_or_known_default().unwrap_or(0);
        if !host_allowed(&self.config.zoom_hosts, host)
            && !target_allowed(&context.http_hosts, host, port)
        {
            return Err(EffectError::new(
                EFFECT,
                EffectErrorKind::Denied,
                format!(
                    "{prefix}host `{host}` is refused: downloads go to Zoom's hosts or to hosts (and ports) the rule allows with `http:<host>`"
                ),
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(EffectError::permanent(
                EFFECT,
                format!("{prefix}a url with credentials is refused"),
            ));
        }
        Ok(())
    }

    /// The first credential to try: the event's download token, else OAuth.
    async fn first_credential(
        &self,
        context: &EffectContext,
        oauth: &OAuthFallback,
    ) -> Result<Credential, EffectError> {
        match &context.download_token {
            Some(token) => Ok(Credential::DownloadToken(token.clone())),
            None => self.oauth_credential(oauth).await,
        }
    }

    async fn oauth_credential(&self, oauth: &OAuthFallback) -> Result<Credential, EffectError> {
        let tokens = oauth
            .as_ref()
            .map_err(|error| EffectError::new(EFFECT, error.kind, error.message.clone()))?;
        let token = tokens.token().await.map_err(|e| {
            let kind = match e {
                crate::zoom::token::TokenError::Refused { .. } => EffectErrorKind::Permanent,
                crate::zoom::token::TokenError::Unavailable(_) => EffectErrorKind::Transient,
            };
            EffectError::new(EFFECT, kind, e.to_string())
        })?;
        Ok(Credential::OAuth(token))
    }

    /// A success response, after token fallback, 429 waits and 5xx retries.
    async fn fetch_with_retries(
        &self,
        url: &Url,
        context: &EffectContext,
        oauth: &OAuthFallback,
    ) -> Result<reqwest::Response, EffectError> {
        let mut fetch = Fetch {
            downloader: self,
            url,
            context,
            oauth,
            credential: self.first_credential(context, oauth).await?,
            oauth_refreshed: false,
        };
        send_with_retry(&mut fetch, &self.config.retry, context.deadline).await
    }

    /// One request, following redirects within the allowed hosts.
    async fn fetch(
        &self,
        start: &Url,
        credential: &Credential,
        context: &EffectContext,
    ) -> Result<reqwest::Response, EffectError> {
        let origin = start.origin();
        let send_token = start.scheme() == "https"
            && host_allowed(
                &self.config.zoom_hosts,
                start.host_str().unwrap_or_default(),
            );
        let mut url = start.clone();
        for hop in 0..=self.config.max_redirects {
            self.check_url(&url, context, hop > 0)?;
            let left = http_retry::remaining(context.deadline);
            if left.is_zero() {
                return Err(EffectError::new(
                    EFFECT,
                    EffectErrorKind::Timeout,
                    "the run's deadline passed before the download finished",
                ));
            }
            let mut request = self.client.get(url.clone()).timeout(left);
            if send_token && url.origin() == origin {
                request = request.bearer_auth(credential.bearer());
            }
            let response = request
                .send()
                .await
                .map_err(|e| EffectError::transient(EFFECT, describe_error(e)))?;
            let location = match response.status().as_u16() {
                301 | 302 | 303 | 307 | 308 => response
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                _ => None,
            };
            let Some(location) = location else {
                return Ok(response);
            };
            let next = url.join(&location).map_err(|_| {
                EffectError::permanent(EFFECT, "a redirect named a malformed location")
            })?;
            if url.scheme() == "https" && next.scheme() == "http" {
                return Err(EffectError::permanent(
                    EFFECT,
                    "a redirect from https to http is refused",
                ));
            }
            url = next;
        }
        Err(EffectError::permanent(
            EFFECT,
            format!("more than {} redirects", self.config.max_redirects),
        ))
    }

    /// Streams the body into a temporary file beside `dest`, then renames it.
    async fn stream_to_file(
        &self,
        response: reqwest::Response,
        dest: &Path,
        expected: Option<u64>,
    ) -> Result<u64, EffectError> {
        let max = self.config.max_bytes;
        let announced = response.content_length();
        check_announced(announced, expected, max)?;
        let partial = partial_path(dest);
        let limit = match (expected, max) {
            (Some(expected), _) => Some(SizeLimit::Expected(expected)),
            (None, Some(max)) => Some(SizeLimit::Cap(max)),
            (None, None) => None,
        };
        let bytes = match write_body(response, &partial, limit).await {
            Ok(bytes) => bytes,
            Err((error, created)) => {
                if created {
                    let _ = tokio::fs::remove_file(&partial).await;
                }
                return Err(error);
            }
        };
        if let Err(error) = check_received(bytes, expected.or(announced)) {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(error);
        }
        if let Err(error) = tokio::fs::rename(&partial, dest).await {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(io_error("renaming the download", error));
        }
        Ok(bytes)
    }
}

/// One download's attempts: a refused download token gives way to the
/// account's OAuth token, and a refused OAuth token is refreshed once.
struct Fetch<'a> {
    downloader: &'a Downloader,
    url: &'a Url,
    context: &'a EffectContext,
    oauth: &'a OAuthFallback,
    credential: Credential,
    oauth_refreshed: bool,
}

impl Fetch<'_> {
    /// The next credential after a 401, if one is left to try.
    async fn after_refusal(&mut self) -> Option<Result<Credential, EffectError>> {
        match &self.credential {
            Credential::DownloadToken(_) => {
                tracing::info!(rule = %self.context.rule, "download token refused, trying the oauth token");
            }
            Credential::OAuth(token) if !self.oauth_refreshed => {
                self.oauth_refreshed = true;
                if let Ok(tokens) = self.oauth {
                    tokens.invalidate(token);
                }
            }
            Credential::OAuth(_) => return None,
        }
        Some(self.downloader.oauth_credential(self.oauth).await)
    }
}

impl Exchange for Fetch<'_> {
    type Answer = reqwest::Response;
    type Error = EffectError;
    const CLIENT: &'static str = "download";

    async fn attempt(&mut self) -> Attempt<reqwest::Response, EffectError> {
        let fetched = self
            .downloader
            .fetch(self.url, &self.credential, self.context)
            .await;
        let response = match fetched {
            Ok(response) => response,
            Err(error) => {
                let retry_safe = error.kind == EffectErrorKind::Transient;
                return Attempt::Failed { error, retry_safe };
            }
        };
        let status = response.status();
        if status.is_success() {
            return Attempt::Done(Ok(response));
        }
        if status == StatusCode::UNAUTHORIZED
            && let Some(next) = self.after_refusal().await
        {
            return match next {
                Ok(credential) => {
                    self.credential = credential;
                    Attempt::Again
                }
                Err(error) => Attempt::Done(Err(error)),
            };
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Attempt::RateLimited {
                retry_after: http_retry::retry_after(response.headers()),
                error: status_error(response).await,
            };
        }
        let error = status_error(response).await;
        if status.is_server_error() {
            return Attempt::Unavailable(Err(error));
        }
        Attempt::Done(Err(error))
    }

    fn outlasts_deadline(&self, error: EffectError, _past: PastDeadline) -> EffectError {
        error
    }
}

/// What a transfer may not pass.
#[derive(Debug, Clone, Copy)]
enum SizeLimit {
    /// The recording file's `file_size`.
    Expected(u64),
    /// The download cap, when nothing says how large the file is.
    Cap(u64),
}

impl SizeLimit {
    fn bytes(self) -> u64 {
        match self {
            SizeLimit::Expected(bytes) | SizeLimit::Cap(bytes) => bytes,
        }
    }

    fn exceeded(self) -> EffectError {
        match self {
            SizeLimit::Expected(bytes) => EffectError::permanent(
                EFFECT,
                format!("the file is larger than the expected {bytes} bytes"),
            ),
            SizeLimit::Cap(max) => too_large(max),
        }
    }
}

/// Refuses an announced length above the limit or different from `file_size`.
fn check_announced(
    announced: Option<u64>,
    expected: Option<u64>,
    max: Option<u64>,
) -> Result<(), EffectError> {
    let Some(len) = announced else {
        return Ok(());
    };
    if let Some(max) = max
        && len > max
    {
        return Err(too_large(max));
    }
    match expected {
        Some(expected) if expected != len => Err(EffectError::permanent(
            EFFECT,
            format!("the server announced {len} bytes where `file_size` says {expected}"),
        )),
        _ => Ok(()),
    }
}

/// Writes the body to `partial`; the error says whether the file was created.
async fn write_body(
    mut response: reqwest::Response,
    partial: &Path,
    limit: Option<SizeLimit>,
) -> Result<u64, (EffectError, bool)> {
    let mut file = crate::private_fs::async_file_options()
        .write(true)
        .create_new(true)
        .open(partial)
        .await
        .map_err(|e| (io_error("creating the download file", e), false))?;
    let mut bytes: u64 = 0;
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => {
                return Err((
                    EffectError::transient(
                        EFFECT,
                        format!(
                            "the transfer broke off after {bytes} bytes: {}",
                            describe_error(e)
                        ),
                    ),
                    true,
                ));
            }
        };
        bytes += chunk.len() as u64;
        if let Some(limit) = limit
            && bytes > limit.bytes()
        {
            return Err((limit.exceeded(), true));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| (io_error("writing the download", e), true))?;
    }
    file.flush()
        .await
        .map_err(|e| (io_error("writing the download", e), true))?;
    file.sync_all()
        .await
        .map_err(|e| (io_error("syncing the download", e), true))?;
    Ok(bytes)
}

/// A transfer that ended early is worth another try.
fn check_received(bytes: u64, expected: Option<u64>) -> Result<(), EffectError> {
    match expected {
        Some(expected) if expected != bytes => Err(EffectError::transient(
            EFFECT,
            format!("received {bytes} bytes where {expected} were expected"),
        )),
        _ => Ok(()),
    }
}

fn too_large(max: u64) -> EffectError {
    EffectError::permanent(
        EFFECT,
        format!("the file is larger than the {max} byte download limit"),
    )
}

fn partial_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nonce = format!("{:016x}", fastrand::u64(..));
    dest.with_file_name(format!(".{name}.{nonce}{PARTIAL_SUFFIX}"))
}

fn io_error(what: &str, error: std::io::Error) -> EffectError {
    EffectError::transient(EFFECT, format!("{what}: {error}"))
}

/// The error for a non-success answer (Zoom's `{code, message}` when given).
async fn status_error(response: reqwest::Response) -> EffectError {
    let status = response.status();
    let json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(http_retry::is_json_content_type);
    let body = read_body_capped(response, 16 << 10)
        .await
        .unwrap_or_default();
    let parsed: Value = if json {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    let message = parsed
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
    let kind = if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        EffectErrorKind::Transient
    } else {
        EffectErrorKind::Permanent
    };
    EffectError {
        effect: EFFECT.into(),
        kind,
        message: format!("the download answered {}: {message}", status.as_u16()),
        code: parsed.get("code").filter(|c| !c.is_null()).cloned(),
        status: Some(status.as_u16()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn creates_folders_inside_the_archive() {
        let root = archive();
        let dest = prepare_destination(root.path(), "2026/03/./meeting.mp4").unwrap();
        assert_eq!(dest.relative, "2026/03/meeting.mp4");
        assert!(root.path().join("2026/03").is_dir());
        assert!(dest.path.starts_with(root.path().canonicalize().unwrap()));
    }

    #[test]
    fn refuses_escapes() {
        let root = archive();
        for (dest, expected) in [
            ("../x.mp4", DestError::ParentDir("../x.mp4".into())),
            (
                "a/../../x.mp4",
                DestError::ParentDir("a/../../x.mp4".into()),
            ),
            ("a\\..\\x.mp4", DestError::ParentDir("a\\..\\x.mp4".into())),
            ("/etc/passwd", DestError::Absolute("/etc/passwd".into())),
            ("\\x", DestError::Absolute("\\x".into())),
            ("C:x", DestError::Absolute("C:x".into())),
            ("", DestError::Empty),
            ("a/", DestError::Empty),
            ("./", DestError::Empty),
            ("x\0y", DestError::Nul("x\0y".into())),
            (
                "a.zoomwire-part",
                DestError::Reserved("a.zoomwire-part".into()),
            ),
        ] {
            assert_eq!(
                prepare_destination(root.path(), dest).unwrap_err(),
                expected,
                "{dest:?}"
            );
        }
        assert_eq!(
            std::fs::read_dir(root.path()).unwrap().count(),
            0,
            "nothing was created"
        );
    }

    #[cfg(unix)]
    #[test]
    fn refuses_symlinks_on_the_way_and_at_the_end() {
        let root = archive();
        let outside = archive();
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), root.path().join("file-link"))
            .unwrap();
        assert_eq!(
            prepare_destination(root.path(), "link/x.mp4").unwrap_err(),
            DestError::Symlink("link/x.mp4".into(), "link".into())
        );
        assert_eq!(
            prepare_destination(root.path(), "file-link").unwrap_err(),
            DestError::Symlink("file-link".into(), "file-link".into())
        );
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
    }

    #[test]
    fn refuses_a_file_in_the_way_and_a_folder_as_target() {
        let root = archive();
        std::fs::write(root.path().join("f"), b"x").unwrap();
        std::fs::create_dir(root.path().join("d")).unwrap();
        assert!(matches!(
            prepare_destination(root.path(), "f/x"),
            Err(DestError::NotAFolder(..))
        ));
        assert!(matches!(
            prepare_destination(root.path(), "d"),
            Err(DestError::IsAFolder(..))
        ));
    }

    #[test]
    fn reads_urls_and_recording_file_maps() {
        let source = parse_source(&json!({
            "download_url": "https://zoom.us/rec/download/abc",
            "file_size": 1234
        }))
        .unwrap();
        assert_eq!(source.expected_size, Some(1234));
        assert_eq!(source.url.host_str(), Some("zoom.us"));
        let source = parse_source(&json!("https://zoom.us/rec/download/abc")).unwrap();
        assert_eq!(source.expected_size, None);
        assert!(parse_source(&json!({"file_size": 1})).is_err());
        assert!(parse_source(&json!(5)).is_err());
    }

    #[test]
    fn partial_files_sit_beside_the_destination() {
        let partial = partial_path(Path::new("/a/b/meeting.mp4"));
        assert_eq!(partial.parent(), Some(Path::new("/a/b")));
        let name = partial.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(".meeting.mp4."), "{name}");
        assert!(name.ends_with(PARTIAL_SUFFIX));
    }
}
