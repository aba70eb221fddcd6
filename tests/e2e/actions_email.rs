//! `email.send` end to end: the live effects talk SMTP over loopback, and
//! each test checks what the server received: envelope, headers and MIME
//! parts from the simulator's SMTP sink (plain SMTP), AUTH and TLS from a
//! full server (aiosmtpd, started by `support::smtp`).

use std::time::Duration;

use crate::support::smtp::{SinkTls, SmtpSink};
use crate::support::{context, install_crypto, perform};
use mail_parser::{MessageParser, MimeHeaders};
use secrecy::SecretString;
use serde_json::{Value, json};
use zoomwire_engine::effects::EffectErrorKind;
use zoomwire_engine::effects::live::{LiveConfig, LiveEffects};
use zoomwire_engine::effects::state::MemoryState;
use zoomwire_engine::zoom::token::{AccessToken, StaticToken};
use zoomwire_sim::sim::{ReceivedMail, SmtpSink as PlainSink, start_smtp_sink};

fn mail_effects(smtp_url: &str, ca_file: Option<&std::path::Path>) -> LiveEffects {
    install_crypto();
    let data = std::env::temp_dir();
    let mut config = LiveConfig::new(&data);
    config.smtp_url = Some(SecretString::from(smtp_url.to_string()));
    config.email_from = Some("Zoomwire <zoomwire@example.com>".into());
    config.smtp_ca_file = ca_file.map(|p| p.to_path_buf());
    config.limits.request_timeout = Duration::from_secs(10);
    LiveEffects::new(
        config,
        vec![zoomwire_engine::effects::accounts::ZoomAccountClient::only(
            std::sync::Arc::new(StaticToken(AccessToken::new("unused"))),
        )],
        std::sync::Arc::new(MemoryState::default()),
    )
    .expect("live effects")
}

async fn send(
    effects: &LiveEffects,
    args: Value,
) -> Result<Value, zoomwire_engine::effects::EffectError> {
    perform(
        effects,
        &context(Duration::from_secs(20)),
        "email.send",
        args,
    )
    .await
}

/// The simulator's SMTP sink on a free loopback port: plain SMTP, no AUTH.
async fn plain_sink() -> PlainSink {
    start_smtp_sink("127.0.0.1:0".parse().unwrap())
        .await
        .expect("the SMTP sink starts")
}

/// The messages the sink accepted once there are `count` of them.
async fn received(sink: &PlainSink, count: usize) -> Vec<ReceivedMail> {
    assert!(
        sink.wait_for(count, Duration::from_secs(10)).await,
        "{count} messages did not arrive"
    );
    sink.messages()
}

/// A MIME type as `type/subtype`.
fn mime_type<'x>(part: &impl MimeHeaders<'x>) -> String {
    let content_type = part.content_type().expect("a Content-Type");
    format!(
        "{}/{}",
        content_type.ctype(),
        content_type.subtype().unwrap_or_default()
    )
}

#[tokio::test]
async fn sends_multipart_alternative_with_cc_bcc_and_reply_to_over_plain_smtp() {
    let sink = plain_sink().await;
    let effects = mail_effects(&sink.url(), None);
    let answer = send(
        &effects,
        json!({
            "to": ["host@example.com", "Alice Example <alice@example.com>"],
            "cc": "ops@example.com",
            "bcc": "audit@example.com",
            "reply_to": "noreply@example.com",
            "subject": "Participants of Weekly Sync – März",
            "text": "3 participants",
            "html": "<p><b>3</b> participants</p>",
        }),
    )
    .await
    .unwrap();
    assert_eq!(answer["recipients"], 4);

    let messages = received(&sink, 1).await;
    assert_eq!(messages.len(), 1);
    let mail = &messages[0];
    assert_eq!(mail.from, "zoomwire@example.com");
    let mut recipients = mail.to.clone();
    recipients.sort();
    assert_eq!(
        recipients,
        [
            "alice@example.com",
            "audit@example.com",
            "host@example.com",
            "ops@example.com"
        ]
    );
    let header = |name: &str| mail.header(name).unwrap_or_default();
    assert_eq!(
        header("to"),
        "host@example.com, \"Alice Example\" <alice@example.com>"
    );
    assert_eq!(header("cc"), "ops@example.com");
    assert!(mail.header("bcc").is_none(), "{}", mail.data);
    assert!(!mail.data.contains("audit@example.com"));
    assert_eq!(header("reply-to"), "noreply@example.com");
    assert_eq!(header("from"), "Zoomwire <zoomwire@example.com>");
    assert_eq!(header("subject"), "Participants of Weekly Sync – März");
    assert_eq!(header("message-id"), answer["message_id"]);

    let message = MessageParser::default()
        .parse(mail.data.as_bytes())
        .expect("a MIME message");
    assert_eq!(mime_type(&message), "multipart/alternative");
    let parts: Vec<String> = message.parts[1..].iter().map(mime_type).collect();
    assert_eq!(parts, ["text/plain", "text/html"]);
    assert_eq!(message.body_text(0).unwrap().trim(), "3 participants");
    assert_eq!(
        message.body_html(0).unwrap().trim(),
        "<p><b>3</b> participants</p>"
    );
}

#[tokio::test]
async fn sends_a_single_html_part() {
    let sink = plain_sink().await;
    let effects = mail_effects(&sink.url(), None);
    send(
        &effects,
        json!({"to": "host@example.com", "subject": "Report", "html": "<h1>Report</h1>"}),
    )
    .await
    .unwrap();
    let mail = &received(&sink, 1).await[0];
    let message = MessageParser::default()
        .parse(mail.data.as_bytes())
        .expect("a MIME message");
    assert_eq!(mime_type(&message), "text/html");
    assert_eq!(message.parts.len(), 1);
}

#[tokio::test]
async fn authenticates_when_the_server_requires_it() {
    let sink = SmtpSink::start(SinkTls::None, Some(("mailer", "s3cret pass")));
    let effects = mail_effects(
        &format!(
            "smtp://mailer:s3cret%20pass@127.0.0.1:{}?tls=none",
            sink.port
        ),
        None,
    );
    send(
        &effects,
        json!({"to": "host@example.com", "subject": "Hi", "text": "hello"}),
    )
    .await
    .unwrap();
    let messages = sink.wait_for_messages(1);
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["authenticated"], true);
    // `?tls=none` said so explicitly: the password went in cleartext.
    assert_eq!(sink.auth_attempts().len(), 1);
}

#[tokio::test]
async fn a_password_is_never_sent_to_a_relay_without_starttls() {
    let sink = SmtpSink::start(SinkTls::None, Some(("mailer", "never-sent-pw")));
    // No `tls` option: with a password, STARTTLS is required.
    let effects = mail_effects(
        &format!("smtp://mailer:never-sent-pw@127.0.0.1:{}", sink.port),
        None,
    );
    let error = send(
        &effects,
        json!({"to": "host@example.com", "subject": "Hi", "text": "hello"}),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Permanent, "{error}");
    assert!(
        error
            .message
            .contains("offers no STARTTLS, so nothing was sent"),
        "{}",
        error.message
    );
    assert!(
        !error.message.contains("never-sent-pw"),
        "{}",
        error.message
    );
    assert_eq!(
        sink.auth_attempts(),
        Vec::<String>::new(),
        "no AUTH reached the relay"
    );
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn a_wrong_password_or_no_credentials_is_a_permanent_error() {
    let sink = SmtpSink::start(SinkTls::None, Some(("mailer", "right")));
    let wrong = mail_effects(
        &format!("smtp://mailer:wrong@127.0.0.1:{}?tls=none", sink.port),
        None,
    );
    let error = send(
        &wrong,
        json!({"to": "host@example.com", "subject": "Hi", "text": "hello"}),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Permanent, "{error}");
    assert_eq!(error.code, Some(json!("535")), "{error}");
    assert!(!error.message.contains("wrong"), "{}", error.message);

    let anonymous = mail_effects(&format!("smtp://127.0.0.1:{}?tls=none", sink.port), None);
    let error = send(
        &anonymous,
        json!({"to": "host@example.com", "subject": "Hi", "text": "hello"}),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Permanent, "{error}");
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn refused_recipients_map_to_permanent_and_transient_errors() {
    let sink = plain_sink().await;
    let effects = mail_effects(&sink.url(), None);
    let error = send(
        &effects,
        json!({"to": "reject-permanent@example.com", "subject": "x", "text": "y"}),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Permanent, "{error}");
    assert_eq!(error.code, Some(json!("550")));
    assert!(error.message.contains("no such user"), "{}", error.message);

    let error = send(
        &effects,
        json!({"to": "reject-temporary@example.com", "subject": "x", "text": "y"}),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Transient, "{error}");
    assert_eq!(error.code, Some(json!("451")));
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn bad_addresses_are_refused_before_connecting() {
    let sink = plain_sink().await;
    let effects = mail_effects(&sink.url(), None);
    let error = send(
        &effects,
        json!({"to": ["host@example.com", "not an address"], "subject": "x", "text": "y"}),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Permanent);
    assert!(
        error
            .message
            .starts_with("`to`: `not an address` is not a valid address"),
        "{}",
        error.message
    );
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn an_unreachable_relay_is_transient() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let effects = mail_effects(&format!("smtp://127.0.0.1:{port}?tls=none"), None);
    let error = send(
        &effects,
        json!({"to": "host@example.com", "subject": "x", "text": "y"}),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Transient, "{error}");
}

#[tokio::test]
async fn starttls_with_a_private_ca_and_auth() {
    let sink = SmtpSink::start(SinkTls::StartTls, Some(("mailer", "pw")));
    let ca = sink.ca_file.clone().unwrap();
    let effects = mail_effects(
        &format!("smtp://mailer:pw@127.0.0.1:{}?tls=starttls", sink.port),
        Some(&ca),
    );
    send(
        &effects,
        json!({"to": "host@example.com", "subject": "tls", "text": "secret stuff"}),
    )
    .await
    .unwrap();
    let message = &sink.wait_for_messages(1)[0];
    assert_eq!(message["tls"], true);
    assert_eq!(message["authenticated"], true);
}

#[tokio::test]
async fn starttls_refuses_an_untrusted_certificate() {
    let sink = SmtpSink::start(SinkTls::StartTls, None);
    let effects = mail_effects(
        &format!("smtp://127.0.0.1:{}?tls=starttls", sink.port),
        None,
    );
    let error = send(
        &effects,
        json!({"to": "host@example.com", "subject": "tls", "text": "x"}),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind, EffectErrorKind::Permanent, "{error}");
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn implicit_tls_with_smtps() {
    let sink = SmtpSink::start(SinkTls::Implicit, Some(("mailer", "pw")));
    let ca = sink.ca_file.clone().unwrap();
    let effects = mail_effects(
        &format!("smtps://mailer:pw@127.0.0.1:{}", sink.port),
        Some(&ca),
    );
    send(
        &effects,
        json!({"to": "host@example.com", "subject": "tls", "text": "x"}),
    )
    .await
    .unwrap();
    let message = &sink.wait_for_messages(1)[0];
    assert_eq!(message["tls"], true);
    assert_eq!(message["authenticated"], true);
}
