//! `email.send` end to end: the live effects talk to a real SMTP server
//! (aiosmtpd, installed and started by `support::smtp`) over loopback, and
//! each test checks what that server received: envelope, headers, MIME
//! parts, AUTH and TLS.

mod support;

use std::time::Duration;

use secrecy::SecretString;
use serde_json::{Value, json};
use support::smtp::{SinkTls, SmtpSink};
use support::{context, install_crypto, perform};
use zoomwire::effects::EffectErrorKind;
use zoomwire::effects::live::{LiveConfig, LiveEffects};
use zoomwire::effects::state::MemoryState;
use zoomwire::zoom::token::{AccessToken, StaticToken};

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
        vec![zoomwire::effects::accounts::ZoomAccountClient::only(
            std::sync::Arc::new(StaticToken(AccessToken::new("unused"))),
        )],
        std::sync::Arc::new(MemoryState::default()),
    )
    .expect("live effects")
}

async fn send(effects: &LiveEffects, args: Value) -> Result<Value, zoomwire::effects::EffectError> {
    perform(
        effects,
        &context(Duration::from_secs(20)),
        "email.send",
        args,
    )
    .await
}

fn header<'a>(message: &'a Value, name: &str) -> &'a str {
    message["headers"][name].as_str().unwrap_or("")
}

#[tokio::test]
async fn sends_multipart_alternative_with_cc_bcc_and_reply_to_over_plain_smtp() {
    let sink = SmtpSink::start(SinkTls::None, None);
    let effects = mail_effects(&format!("smtp://127.0.0.1:{}?tls=none", sink.port), None);
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

    let messages = sink.wait_for_messages(1);
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(message["mail_from"], "zoomwire@example.com");
    let mut recipients: Vec<&str> = message["rcpt_tos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
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
    assert_eq!(
        header(message, "to"),
        "host@example.com, Alice Example <alice@example.com>"
    );
    assert_eq!(header(message, "cc"), "ops@example.com");
    assert!(message["headers"].get("bcc").is_none(), "{message}");
    assert!(
        !message["raw"]
            .as_str()
            .unwrap()
            .contains("audit@example.com")
    );
    assert_eq!(header(message, "reply-to"), "noreply@example.com");
    assert_eq!(header(message, "from"), "Zoomwire <zoomwire@example.com>");
    assert_eq!(
        header(message, "subject"),
        "Participants of Weekly Sync – März"
    );
    assert_eq!(header(message, "message-id"), answer["message_id"]);
    assert_eq!(message["content_type"], "multipart/alternative");
    let parts = message["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0]["content_type"], "text/plain");
    assert_eq!(
        parts[0]["content"].as_str().unwrap().trim(),
        "3 participants"
    );
    assert_eq!(parts[1]["content_type"], "text/html");
    assert_eq!(
        parts[1]["content"].as_str().unwrap().trim(),
        "<p><b>3</b> participants</p>"
    );
    assert_eq!(message["tls"], false);
}

#[tokio::test]
async fn sends_a_single_html_part() {
    let sink = SmtpSink::start(SinkTls::None, None);
    let effects = mail_effects(&format!("smtp://127.0.0.1:{}", sink.port), None);
    send(
        &effects,
        json!({"to": "host@example.com", "subject": "Report", "html": "<h1>Report</h1>"}),
    )
    .await
    .unwrap();
    let message = &sink.wait_for_messages(1)[0];
    assert_eq!(message["content_type"], "text/html");
    assert_eq!(message["parts"].as_array().unwrap().len(), 1);
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
    let sink = SmtpSink::start(SinkTls::None, None);
    let effects = mail_effects(&format!("smtp://127.0.0.1:{}?tls=none", sink.port), None);
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
    let sink = SmtpSink::start(SinkTls::None, None);
    let effects = mail_effects(&format!("smtp://127.0.0.1:{}?tls=none", sink.port), None);
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
