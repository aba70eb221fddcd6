//! What each fuzz target checks, one function per target taking libFuzzer's
//! bytes. A function returns normally when the input is handled as the
//! engine promises and panics otherwise (libFuzzer reports the panic as a
//! crash and keeps the input).
//!
//! The same file is compiled twice: by the fuzz crate (`fuzz_targets/*.rs`,
//! nightly, coverage-instrumented), and by the end-to-end tests'
//! `tests/e2e/fuzz_corpus.rs` on stable, which runs every committed corpus
//! file through these functions without fuzzing. So it uses only crates the
//! engine depends on itself (and the `zoomwire` package's tests too).
//!
//! Inputs that carry several texts split them at fixed separators so that
//! the corpus files stay readable: see each function.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue};
use rhai::Dynamic;
use secrecy::SecretString;
use zoomwire_engine::config::{Settings, SourceText, Sources};
use zoomwire_engine::event::{Event, Source, take_download_token};
use zoomwire_engine::rules::compile::compile_rule;
use zoomwire_engine::rules::fast::FastCondition;
use zoomwire_engine::rules::load::parse_rule_file;
use zoomwire_engine::script::{Sandbox, SandboxLimits, ScriptModules};
use zoomwire_engine::zoom::frame::{Frame, decode_event_or_frame, decode_frame};
use zoomwire_engine::zoom::webhook::{
    SIGNATURE_HEADER, TIMESTAMP_HEADER, UnverifiedWebhook, WebhookError, WebhookMessage, sign,
};
use zoomwire_engine::zoom::websocket::parse_endpoint;

/// The folder holding `zoomwire.example.yaml`, `scripts/` and `rules/`,
/// found upwards from the crate compiling this file (the fuzz crate or the
/// engine).
pub fn repo_root() -> PathBuf {
    let start = Path::new(env!("CARGO_MANIFEST_DIR"));
    start
        .ancestors()
        .find(|dir| dir.join("zoomwire.example.yaml").is_file())
        .unwrap_or(start)
        .to_path_buf()
}

/// One target's check: returns on an input handled as promised, panics otherwise.
pub type Check = fn(&[u8]);

/// The targets, by name, as the corpus folders are named.
pub const TARGETS: [(&str, Check); 5] = [
    ("frame_decoder", frame_decoder),
    ("webhook_verifier", webhook_verifier),
    ("rule_loader", rule_loader),
    ("config_loader", config_loader),
    ("fast_conditions", fast_conditions),
];

// ---------------------------------------------------------------------------
// The WebSocket frame decoder

/// Input: one WebSocket text frame.
///
/// Checks: no panic; a decoded event carries exactly the text serde_json
/// reads from the frame's `content` (the decoder unescapes it by hand),
/// less a top-level `download_token`, which the engine keeps apart as a
/// secret;
/// `zoomwire fire`'s reading of the same text agrees; and the event's
/// dedupe key does not depend on how its JSON is laid out.
pub fn frame_decoder(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let source = Source::Websocket("fuzz".into());
    let decoded = decode_frame(text, &source);
    let fired = decode_event_or_frame(text, Source::Fire);
    let Ok(Frame::Event(event)) = decoded else {
        return;
    };
    if let Ok(frame) = serde_json::from_str::<serde_json::Value>(text)
        && let Some(content) = frame.get("content")
    {
        let content = match content {
            serde_json::Value::String(s) => s.clone(),
            _ => text_of_raw_content(text),
        };
        let (expected, _token) = take_download_token(&content).expect("the decoder read this body");
        assert_eq!(&*event.raw, expected, "event text differs from `content`");
    }
    let fired = fired.expect("`fire` refuses a frame the decoder reads");
    assert_eq!(fired.id, event.id, "`fire` gives another dedupe key");
    assert_eq!(fired.raw, event.raw);
    layout_does_not_change_the_key(&event);
}

/// The raw JSON of an object `content`, as the decoder keeps it.
fn text_of_raw_content(frame: &str) -> String {
    serde_json::from_str::<BTreeMap<String, Box<serde_json::value::RawValue>>>(frame)
        .ok()
        .and_then(|fields| Some(fields.get("content")?.get().to_string()))
        .unwrap_or_default()
}

/// The same event compact and pretty-printed has one dedupe key: Zoom's
/// webhook and WebSocket deliveries of one event must meet in the journal.
fn layout_does_not_change_the_key(event: &Event) {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&event.raw) else {
        return;
    };
    let compact = serde_json::to_string(&value).expect("a value serializes");
    let pretty = serde_json::to_string_pretty(&value).expect("a value serializes");
    let compact = Event::parse(&compact, Source::Test);
    let pretty = Event::parse(&pretty, Source::Test);
    match (compact, pretty) {
        (Ok(compact), Ok(pretty)) => {
            assert_eq!(compact.id, pretty.id, "layout changed the dedupe key");
            assert_eq!(compact.event_type, pretty.event_type);
            assert_eq!(compact.ts, pretty.ts);
        }
        (compact, pretty) => assert_eq!(
            compact.err(),
            pretty.err(),
            "one layout of the event parses, the other does not"
        ),
    }
}

// ---------------------------------------------------------------------------
// The webhook verifier

const WEBHOOK_SECRET: &str = "fuzz_webhook_secret_token";

/// Input: the `x-zm-request-timestamp` header's text, a line break, the
/// `x-zm-signature` header's text, a line break, the raw body.
///
/// Checks: the request as given is refused unless its signature is right
/// (a fuzzer cannot forge HMAC-SHA256, so it is refused, without a panic);
/// the same body correctly signed at that timestamp is accepted, and its
/// message parsed without a panic; one flipped bit of the body, or another
/// timestamp, is refused as a bad signature; an event from the webhook has
/// the dedupe key of the same body arriving by the WebSocket.
pub fn webhook_verifier(data: &[u8]) {
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let (Some(timestamp), Some(signature)) = (parts.next(), parts.next()) else {
        return;
    };
    let body = Bytes::copy_from_slice(parts.next().unwrap_or_default());
    let secret = SecretString::from(WEBHOOK_SECRET);
    let now = 1_732_030_000;

    let given = UnverifiedWebhook::new(&headers(Some(timestamp), Some(signature)), body.clone());
    if let Ok(verified) = given.verify(&secret, now) {
        // Only a right signature passes.
        let text = String::from_utf8_lossy(timestamp);
        let given = String::from_utf8_lossy(signature);
        assert!(
            given
                .trim()
                .eq_ignore_ascii_case(&sign(&secret, text.trim(), &body)),
            "a wrong signature was accepted"
        );
        let _ = verified.into_message();
    }

    let Some(stamp) = header_text(timestamp) else {
        return;
    };
    let signed = sign(&secret, &stamp, &body);
    let Ok(seconds) = stamp.parse::<i64>() else {
        let refused =
            UnverifiedWebhook::new(&headers(Some(timestamp), Some(signed.as_bytes())), body)
                .verify(&secret, now);
        assert_eq!(refused.err(), Some(WebhookError::BadTimestamp));
        return;
    };
    let seconds = if seconds > 100_000_000_000 {
        seconds / 1000
    } else {
        seconds
    };
    let request = |body: Bytes, signature: &str| {
        UnverifiedWebhook::new(
            &headers(Some(stamp.as_bytes()), Some(signature.as_bytes())),
            body,
        )
    };
    let verified = request(body.clone(), &signed)
        .verify(&secret, seconds)
        .expect("a correctly signed, fresh request is refused");
    assert_eq!(verified.timestamp(), seconds);
    assert_eq!(verified.body(), &body[..]);
    if !body.is_empty() {
        let mut tampered = body.to_vec();
        let at = usize::from(tampered[0]) % tampered.len();
        tampered[at] ^= 1;
        let refused = request(Bytes::from(tampered), &signed).verify(&secret, seconds);
        assert_eq!(refused.err(), Some(WebhookError::BadSignature));
    }
    let other_stamp = format!("{}", seconds.wrapping_add(1));
    let replayed = UnverifiedWebhook::new(
        &headers(Some(other_stamp.as_bytes()), Some(signed.as_bytes())),
        body.clone(),
    )
    .verify(&secret, seconds);
    assert_eq!(replayed.err(), Some(WebhookError::BadSignature));

    match verified.into_message() {
        Ok(WebhookMessage::Event(event)) => same_key_by_websocket(&event),
        Ok(WebhookMessage::UrlValidation { plain_token }) => assert!(!plain_token.is_empty()),
        Err(_) => {}
    }
}

/// The header value as the verifier reads it (trimmed), if it can be sent.
fn header_text(bytes: &[u8]) -> Option<String> {
    let value = HeaderValue::from_bytes(bytes).ok()?;
    Some(value.to_str().ok()?.trim().to_string())
}

fn headers(timestamp: Option<&[u8]>, signature: Option<&[u8]>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [(TIMESTAMP_HEADER, timestamp), (SIGNATURE_HEADER, signature)] {
        if let Some(value) = value.and_then(|v| HeaderValue::from_bytes(v).ok()) {
            headers.insert(name, value);
        }
    }
    headers
}

/// The body of a webhook event, sent by the WebSocket as a message frame,
/// is the same event with the same dedupe key.
fn same_key_by_websocket(event: &Event) {
    let frame = serde_json::json!({"module": "message", "content": &*event.raw}).to_string();
    match decode_frame(&frame, &Source::Websocket("fuzz".into())) {
        Ok(Frame::Event(by_socket)) => {
            assert_eq!(by_socket.id, event.id, "webhook and socket keys differ");
            assert_eq!(by_socket.raw, event.raw);
        }
        // An event whose text says "invalid token" outside a JSON object
        // cannot be one: the body parsed as an object.
        other => panic!("the socket refuses a webhook event: {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// The rule loader

/// The sandbox rules compile in, with the repository's `scripts/` modules.
static RULE_SANDBOX: LazyLock<(Sandbox, PathBuf)> = LazyLock::new(|| {
    let limits = SandboxLimits::default();
    let scripts = repo_root().join("scripts");
    let modules = ScriptModules::load(&scripts, &limits).expect("the scripts folder loads");
    (Sandbox::new(limits, modules), scripts)
});

/// Input: the text of one rule file (YAML, with Rhai in `when`, `key`, `do`).
///
/// Checks: no panic; every error names a position inside the file (a line
/// that exists as YAML counts lines, the empty one after a final line break
/// included; a column at least 1) and says something.
pub fn rule_loader(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (sandbox, scripts) = &*RULE_SANDBOX;
    let path = Path::new("rules/fuzz.yaml");
    let (sources, mut errors) = parse_rule_file(path, text);
    for source in &sources {
        if let Err(mut rule_errors) = compile_rule(source, sandbox, scripts) {
            errors.append(&mut rule_errors);
        }
    }
    let lines = yaml_lines(text);
    for error in &errors {
        assert!(
            !error.message.trim().is_empty(),
            "an empty error: {error:?}"
        );
        if error.path != path {
            continue; // in a script file of `scripts/`
        }
        let at = error.position;
        assert!(
            at.line >= 1 && at.line <= lines && at.column >= 1,
            "error outside the file ({lines} lines): {error}"
        );
    }
}

/// The file's lines as YAML counts them: `\r\n`, `\r` and `\n` each end one
/// (editors count a lone `\r` too; `str::lines` does not).
fn yaml_lines(text: &str) -> usize {
    let breaks = text.replace("\r\n", "\n").matches(['\r', '\n']).count();
    breaks + 1
}

// ---------------------------------------------------------------------------
// The config loader

/// Environment variables whose values are secrets.
const SECRET_VARIABLES: [&str; 6] = [
    "ZOOM_CLIENT_SECRET",
    "ZOOM_WEBHOOK_SECRET_TOKEN",
    "SLACK_BOT_TOKEN",
    "SLACK_WEBHOOK_URL",
    "SMTP_URL",
    "ZOOMWIRE_ADMIN_TOKEN",
];

/// Input: `zoomwire.yaml`, a NUL byte, `.env`, a NUL byte, the environment
/// as `NAME=value` lines (each part optional).
///
/// Checks: no panic; settings that load give the daemon what it needs
/// without failing later (URLs parse, the WebSocket endpoint splits); no
/// secret given in the environment shows in an error or in the settings'
/// `Debug`.
pub fn config_loader(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\0');
    let yaml = parts.next().unwrap_or_default();
    let dotenv = parts.next();
    let env: BTreeMap<String, String> = parts
        .next()
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    let sources = Sources {
        yaml: Some(SourceText {
            path: PathBuf::from("zoomwire.yaml"),
            text: yaml.to_string(),
        }),
        dotenv: dotenv.map(|text| SourceText {
            path: PathBuf::from(".env"),
            text: text.to_string(),
        }),
        env,
    };
    let shown = settings_as_shown(&sources);
    for name in SECRET_VARIABLES {
        let Some(secret) = sources.env.get(name) else {
            continue;
        };
        if secret.trim().len() < 8
            || !shown.contains(secret.as_str())
            || written_elsewhere(&sources, name, secret)
        {
            continue;
        }
        // Shown: unless the engine shows the same text with another secret
        // of the same shape (then it is its own text, such as a default).
        let mut other = sources.clone();
        other
            .env
            .insert(name.to_string(), another_of_same_shape(secret));
        assert!(
            settings_as_shown(&other).contains(secret.as_str()),
            "{name} shows in what the settings say:\n{shown}"
        );
    }
}

/// Whether `secret` is written in the input other than as `name`'s value.
fn written_elsewhere(sources: &Sources, name: &str, secret: &str) -> bool {
    let in_file =
        |file: &Option<SourceText>| file.as_ref().is_some_and(|f| f.text.contains(secret));
    in_file(&sources.yaml)
        || in_file(&sources.dotenv)
        || sources
            .env
            .iter()
            .any(|(n, v)| n.contains(secret) || (n != name && v.contains(secret)))
}

/// Each ASCII letter and digit replaced by the next one (`z` by `a`), the
/// rest kept: a URL stays a URL.
fn another_of_same_shape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            'z' => 'a',
            'Z' => 'A',
            '9' => '0',
            c if c.is_ascii_alphanumeric() => char::from(c as u8 + 1),
            c => c,
        })
        .collect()
}

/// Loads settings, uses them as the daemon would, and returns what they
/// show: every error's message, or the settings' `Debug`.
fn settings_as_shown(sources: &Sources) -> String {
    match Settings::from_sources(sources) {
        Err(errors) => {
            let all = errors.to_string();
            assert!(errors.iter().count() > 0 && !all.trim().is_empty());
            format!("{all}\n{errors:?}")
        }
        Ok(settings) => {
            let _ = settings.require_daemon();
            let _ = settings.live_config();
            let _ = settings.admin_options();
            let _ = settings.reconcile_config();
            let _ = settings.journal_options();
            for account in &settings.accounts {
                let _ = settings.oauth_config(account);
                if settings.websocket_config(account).is_some() {
                    parse_endpoint(&settings.zoom.ws_base)
                        .expect("the settings accept a WebSocket base that cannot connect");
                }
            }
            format!("{settings:?}")
        }
    }
}

// ---------------------------------------------------------------------------
// Fast conditions against Rhai

/// Sandboxes with the default limits and with tiny ones (under which Rhai
/// fails method calls on small values, and the fast answers must follow).
static CONDITION_SANDBOXES: LazyLock<[Sandbox; 2]> = LazyLock::new(|| {
    let tiny = SandboxLimits {
        max_string_size: 4,
        max_array_size: 2,
        max_map_size: 3,
        ..SandboxLimits::default()
    };
    [SandboxLimits::default(), tiny].map(|limits| Sandbox::new(limits, ScriptModules::empty()))
});

/// Input: a `when` expression on the first line, an event body (JSON) after
/// it.
///
/// Checks, in a sandbox with the default limits and in one with tiny limits:
/// whenever the fast condition answers, Rhai evaluating the same expression
/// on the same event, as the matcher does, gives the same bool. Any
/// disagreement is a bug of `rules/fast.rs`.
pub fn fast_conditions(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (condition, body) = text.split_once('\n').unwrap_or((text, "{}"));
    let Ok(event) = Event::parse(body, Source::Test) else {
        return;
    };
    for sandbox in CONDITION_SANDBOXES.iter() {
        let Some(fast) = FastCondition::compile_with_limits(condition, sandbox.limits()) else {
            return;
        };
        let Ok(ast) = sandbox.compile_expression(condition) else {
            return; // such a rule does not load
        };
        let Some(answer) = fast.eval(&event.tree()) else {
            continue;
        };
        let vars = Dynamic::from_map(rhai::Map::new());
        let mut scope = sandbox.expression_scope(event.body(), &event.meta(), &vars);
        let by_rhai = sandbox.eval_expression(&mut scope, &ast);
        assert!(
            matches!(&by_rhai, Ok(value) if value.as_bool() == Ok(answer)),
            "fast gave {answer}, Rhai gave {by_rhai:?}\n  when: {condition}\n  body: {body}\n  limits: {:?}",
            sandbox.limits()
        );
    }
}
