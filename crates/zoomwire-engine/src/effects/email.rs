//! `email::send(#{to, cc, bcc, subject, text, html, reply_to})` through an
//! SMTP relay (lettre), configured by `SMTP_URL` and `EMAIL_FROM`.
//!
//! `SMTP_URL` forms: `smtp://host[:port]` (STARTTLS when the server offers
//! it), `smtp://host?tls=starttls` (STARTTLS required, port 587 by default),
//! `smtp://host?tls=none` (plain, for a local relay), `smtps://host` (implicit
//! TLS, port 465), each with optional `user:pass@` (percent-encoded).
//! Credentials go only over TLS: with a password, `smtp://` requires
//! STARTTLS (a relay that does not offer it fails the send before AUTH),
//! `?tls=opportunistic` is refused, and only an explicit `?tls=none` sends
//! the password in cleartext, with a warning when the mailer starts. Both
//! `text` and `html` make a multipart/alternative message. `bcc` goes to the
//! envelope only. SMTP 4xx answers, timeouts and connection failures are
//! transient; 5xx answers, TLS failures and bad addresses are permanent.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lettre::message::{Mailbox, Mailboxes, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use percent_encoding::percent_decode_str;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use url::Url;

use super::{EffectError, EffectErrorKind, EffectName};

const EFFECT: &str = EffectName::EmailSend.as_str();

/// How the connection to the relay is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// Plain text (`?tls=none`).
    None,
    /// STARTTLS when the server offers it (the `smtp://` default).
    Opportunistic,
    /// STARTTLS or fail (`?tls=starttls`, `?tls=required`).
    StartTls,
    /// TLS from the first byte (`smtps://`).
    Implicit,
}

/// `SMTP_URL`, parsed. `Debug` hides the password.
#[derive(Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: Option<String>,
    pub password: Option<SecretString>,
}

impl fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// A mail configuration that cannot work. Never shows the password.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EmailConfigError {
    #[error("SMTP_URL is not a valid url")]
    NotAUrl,
    #[error("SMTP_URL scheme `{0}` is not smtp or smtps")]
    Scheme(String),
    #[error("SMTP_URL has no host")]
    NoHost,
    #[error("SMTP_URL option `tls={0}` is not one of none, opportunistic, starttls, required")]
    TlsOption(String),
    #[error("SMTP_URL option `{0}` is unknown (only `tls` is understood)")]
    UnknownOption(String),
    #[error(
        "SMTP_URL holds a password and says tls=opportunistic, which would send it in cleartext to a relay without STARTTLS: use tls=starttls (or smtps://), or tls=none to accept cleartext"
    )]
    OpportunisticWithPassword,
    #[error("EMAIL_FROM `{0}` is not a valid address: {1}")]
    From(String, String),
    #[error("the SMTP CA certificate: {0}")]
    Certificate(String),
    #[error("SMTP TLS setup: {0}")]
    Tls(String),
}

impl SmtpSettings {
    pub fn parse(text: &str) -> Result<SmtpSettings, EmailConfigError> {
        let url = Url::parse(text).map_err(|_| EmailConfigError::NotAUrl)?;
        let mut security = match url.scheme() {
            "smtp" => SmtpSecurity::Opportunistic,
            "smtps" => SmtpSecurity::Implicit,
            other => return Err(EmailConfigError::Scheme(other.into())),
        };
        let mut explicit_opportunistic = false;
        for (key, value) in url.query_pairs() {
            if key != "tls" {
                return Err(EmailConfigError::UnknownOption(key.into_owned()));
            }
            if security == SmtpSecurity::Implicit {
                continue;
            }
            security = match value.to_ascii_lowercase().as_str() {
                "none" | "off" | "false" => SmtpSecurity::None,
                "opportunistic" => SmtpSecurity::Opportunistic,
                "starttls" | "required" | "true" => SmtpSecurity::StartTls,
                "implicit" | "wrapper" => SmtpSecurity::Implicit,
                _ => return Err(EmailConfigError::TlsOption(value.into_owned())),
            };
            explicit_opportunistic = security == SmtpSecurity::Opportunistic;
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or(EmailConfigError::NoHost)?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url.port().unwrap_or(match security {
            SmtpSecurity::Implicit => 465,
            SmtpSecurity::StartTls => 587,
            SmtpSecurity::None | SmtpSecurity::Opportunistic => 25,
        });
        let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
        let username = Some(decode(url.username())).filter(|u| !u.is_empty());
        let password = url.password().map(|p| SecretString::from(decode(p)));
        if password.is_some() && security == SmtpSecurity::Opportunistic {
            if explicit_opportunistic {
                return Err(EmailConfigError::OpportunisticWithPassword);
            }
            // Credentials only over TLS: the port stays as written or defaulted.
            security = SmtpSecurity::StartTls;
        }
        Ok(SmtpSettings {
            host,
            port,
            security,
            username,
            password,
        })
    }
}

/// The `email.send` effect.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    max_body_bytes: usize,
}

impl Mailer {
    /// `ca_pem` adds a trusted root (a relay with a private CA).
    pub fn new(
        settings: &SmtpSettings,
        from: &str,
        ca_pem: Option<&[u8]>,
        timeout: Duration,
        max_body_bytes: usize,
    ) -> Result<Mailer, EmailConfigError> {
        let from: Mailbox = from.parse().map_err(|e: lettre::address::AddressError| {
            EmailConfigError::From(from.into(), e.to_string())
        })?;
        let tls = tls_parameters(&settings.host, ca_pem)?;
        let tls = match settings.security {
            SmtpSecurity::None => Tls::None,
            SmtpSecurity::Opportunistic => Tls::Opportunistic(tls),
            SmtpSecurity::StartTls => Tls::Required(tls),
            SmtpSecurity::Implicit => Tls::Wrapper(tls),
        };
        if settings.security == SmtpSecurity::None && settings.password.is_some() {
            tracing::warn!(host = %settings.host, port = settings.port, "SMTP_URL says tls=none: the mail password goes to the relay in cleartext");
        }
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&settings.host)
            .port(settings.port)
            .tls(tls)
            .timeout(Some(timeout));
        if let Some(username) = &settings.username {
            let password = settings
                .password
                .as_ref()
                .map(|p| p.expose_secret().to_string())
                .unwrap_or_default();
            builder = builder.credentials(Credentials::new(username.clone(), password));
        }
        Ok(Mailer {
            transport: builder.build(),
            from,
            max_body_bytes,
        })
    }

    /// Sends one message; answers `{message_id, recipients}`.
    pub async fn send(&self, args: &Value) -> Result<Value, EffectError> {
        let message = self.build_message(args)?;
        let recipients = message.envelope().to().len();
        let message_id = message
            .headers()
            .get_raw("Message-ID")
            .unwrap_or_default()
            .to_string();
        self.transport.send(message).await.map_err(smtp_error)?;
        metrics::counter!("zoomwire_emails_sent_total").increment(1);
        Ok(json!({"message_id": message_id, "recipients": recipients}))
    }

    fn build_message(&self, args: &Value) -> Result<Message, EffectError> {
        let to = mailboxes(args, "to")?;
        let cc = mailboxes(args, "cc")?;
        let bcc = mailboxes(args, "bcc")?;
        let reply_to = mailboxes(args, "reply_to")?;
        if to.is_empty() && cc.is_empty() && bcc.is_empty() {
            return Err(bad(
                "a message needs at least one recipient in `to`, `cc` or `bcc`",
            ));
        }
        let subject = match args.get("subject") {
            Some(Value::String(subject)) => subject.as_str(),
            None | Some(Value::Null) => "",
            Some(_) => return Err(bad("`subject` must be a string")),
        };
        if subject.contains(['\r', '\n']) {
            return Err(bad("`subject` must be one line"));
        }
        let text = optional_string(args, "text")?;
        let html = optional_string(args, "html")?;
        let size = text.map_or(0, str::len) + html.map_or(0, str::len);
        if size > self.max_body_bytes {
            return Err(bad(&format!(
                "the message body is larger than the {} byte limit",
                self.max_body_bytes
            )));
        }
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .message_id(Some(message_id(&self.from)));
        for mailbox in to {
            builder = builder.to(mailbox);
        }
        for mailbox in cc {
            builder = builder.cc(mailbox);
        }
        for mailbox in bcc {
            builder = builder.bcc(mailbox);
        }
        for mailbox in reply_to {
            builder = builder.reply_to(mailbox);
        }
        let built = match (text, html) {
            (Some(text), Some(html)) => builder.multipart(MultiPart::alternative_plain_html(
                text.to_string(),
                html.to_string(),
            )),
            (None, Some(html)) => builder.singlepart(SinglePart::html(html.to_string())),
            (Some(text), None) => builder.singlepart(SinglePart::plain(text.to_string())),
            (None, None) => return Err(bad("a message needs `text` or `html`")),
        };
        built.map_err(|e| bad(&format!("the message cannot be built: {e}")))
    }
}

fn tls_parameters(host: &str, ca_pem: Option<&[u8]>) -> Result<TlsParameters, EmailConfigError> {
    let mut builder = TlsParameters::builder(host.to_string());
    if let Some(pem) = ca_pem {
        let certificate =
            Certificate::from_pem(pem).map_err(|e| EmailConfigError::Certificate(e.to_string()))?;
        builder = builder.add_root_certificate(certificate);
    }
    builder
        .build()
        .map_err(|e| EmailConfigError::Tls(e.to_string()))
}

fn bad(message: &str) -> EffectError {
    EffectError::permanent(EFFECT, message)
}

fn optional_string<'a>(args: &'a Value, key: &str) -> Result<Option<&'a str>, EffectError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.as_str())),
        Some(_) => Err(bad(&format!("`{key}` must be a string"))),
    }
}

/// A recipient field: a string (comma-separated allowed) or a list of strings.
fn mailboxes(args: &Value, key: &str) -> Result<Vec<Mailbox>, EffectError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) => parse_address_list(key, text),
        Some(Value::Array(items)) => {
            let mut all = Vec::new();
            for item in items {
                let text = item
                    .as_str()
                    .ok_or_else(|| bad(&format!("`{key}` must hold address strings")))?;
                all.extend(parse_address_list(key, text)?);
            }
            Ok(all)
        }
        Some(_) => Err(bad(&format!(
            "`{key}` must be an address or a list of addresses"
        ))),
    }
}

fn parse_address_list(key: &str, text: &str) -> Result<Vec<Mailbox>, EffectError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    if let Ok(list) = text.parse::<Mailboxes>() {
        return Ok(list.into_iter().collect());
    }
    // Name the address that failed, not just the list.
    for part in text.split(',') {
        if let Err(error) = part.trim().parse::<Mailbox>() {
            return Err(bad(&format!(
                "`{key}`: `{}` is not a valid address ({error})",
                part.trim()
            )));
        }
    }
    Err(bad(&format!(
        "`{key}`: `{text}` is not a valid address list"
    )))
}

fn message_id(from: &Mailbox) -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    format!(
        "<{millis}.{:016x}@{}>",
        fastrand::u64(..),
        from.email.domain()
    )
}

fn smtp_error(error: lettre::transport::smtp::Error) -> EffectError {
    // A client error is a protocol or configuration mismatch: STARTTLS
    // required but not offered, no common AUTH mechanism.
    let kind = if error.is_permanent()
        || error.is_tls()
        || error.is_client()
        || is_certificate_problem(&error)
    {
        EffectErrorKind::Permanent
    } else {
        EffectErrorKind::Transient
    };
    let code = error.status().map(|code| Value::from(code.to_string()));
    let text = error.to_string();
    let message = if error.is_client() && text.contains("STARTTLS") {
        format!(
            "smtp: {text}: the relay offers no STARTTLS, so nothing was sent (the password goes only over TLS: use smtps://, a relay with STARTTLS, or ?tls=none to accept cleartext)"
        )
    } else {
        format!("smtp: {text}")
    };
    EffectError {
        effect: EFFECT.into(),
        kind,
        message,
        code,
        status: None,
    }
}

/// Whether a TLS handshake failed (an untrusted or mismatched certificate):
/// a configuration problem that retrying will not fix. lettre reports it as
/// a connection error, so look for rustls' error among the causes.
fn is_certificate_problem(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if current.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        {
            return true;
        }
        cause = current.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailer() -> Mailer {
        let settings = SmtpSettings::parse("smtp://127.0.0.1:2525?tls=none").unwrap();
        Mailer::new(
            &settings,
            "Zoomwire <bot@example.com>",
            None,
            Duration::from_secs(5),
            1024,
        )
        .unwrap()
    }

    #[test]
    fn parses_smtp_urls() {
        let s = SmtpSettings::parse("smtp://user%40x:p%3Ass@mail.test:587").unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.security),
            ("mail.test", 587, SmtpSecurity::StartTls)
        );
        assert_eq!(s.username.as_deref(), Some("user@x"));
        assert_eq!(s.password.as_ref().unwrap().expose_secret(), "p:ss");
        let s = SmtpSettings::parse("smtp://mail.test?tls=starttls").unwrap();
        assert_eq!((s.port, s.security), (587, SmtpSecurity::StartTls));
        let s = SmtpSettings::parse("smtps://mail.test").unwrap();
        assert_eq!((s.port, s.security), (465, SmtpSecurity::Implicit));
        let s = SmtpSettings::parse("smtp://127.0.0.1:2525?tls=none").unwrap();
        assert_eq!((s.port, s.security), (2525, SmtpSecurity::None));
        assert!(s.username.is_none());
    }

    #[test]
    fn a_password_goes_only_over_tls_unless_the_url_says_tls_none() {
        let s = SmtpSettings::parse("smtp://u:pw@mail.test:587").unwrap();
        assert_eq!((s.port, s.security), (587, SmtpSecurity::StartTls));
        let s = SmtpSettings::parse("smtp://u:pw@mail.test").unwrap();
        assert_eq!((s.port, s.security), (25, SmtpSecurity::StartTls));
        let s = SmtpSettings::parse("smtp://u:pw@mail.test?tls=none").unwrap();
        assert_eq!(s.security, SmtpSecurity::None);
        assert_eq!(
            SmtpSettings::parse("smtp://u:pw@mail.test?tls=opportunistic").unwrap_err(),
            EmailConfigError::OpportunisticWithPassword
        );
        let s = SmtpSettings::parse("smtp://mail.test?tls=opportunistic").unwrap();
        assert_eq!(
            s.security,
            SmtpSecurity::Opportunistic,
            "no password to protect"
        );
    }

    #[test]
    fn refuses_bad_smtp_urls_without_showing_the_password() {
        assert_eq!(
            SmtpSettings::parse("http://u:secret@x").unwrap_err(),
            EmailConfigError::Scheme("http".into())
        );
        assert_eq!(
            SmtpSettings::parse("smtp://x?tls=maybe").unwrap_err(),
            EmailConfigError::TlsOption("maybe".into())
        );
        assert_eq!(
            SmtpSettings::parse("smtp://x?starttls=1").unwrap_err(),
            EmailConfigError::UnknownOption("starttls".into())
        );
        let debug = format!("{:?}", SmtpSettings::parse("smtp://u:secret@x").unwrap());
        assert!(!debug.contains("secret"), "{debug}");
    }

    #[test]
    fn builds_multipart_alternative_with_bcc_in_the_envelope_only() {
        let message = mailer()
            .build_message(&json!({
                "to": "a@example.com, \"Doe, Jo\" <jo@example.com>",
                "cc": ["c@example.com"],
                "bcc": "hidden@example.com",
                "reply_to": "r@example.com",
                "subject": "Réunion",
                "text": "plain",
                "html": "<b>rich</b>",
            }))
            .unwrap();
        assert_eq!(message.envelope().to().len(), 4);
        let formatted = String::from_utf8(message.formatted()).unwrap();
        assert!(formatted.contains("multipart/alternative"), "{formatted}");
        assert!(!formatted.contains("hidden@example.com"), "{formatted}");
        assert!(formatted.contains("Reply-To: r@example.com"), "{formatted}");
    }

    #[test]
    fn names_the_bad_address() {
        let error = mailer()
            .build_message(
                &json!({"to": "a@example.com, not an address", "subject": "x", "text": "y"}),
            )
            .unwrap_err();
        assert!(
            error
                .message
                .starts_with("`to`: `not an address` is not a valid address"),
            "{}",
            error.message
        );
        let error = mailer()
            .build_message(&json!({"to": ["ok@example.com", "@nope"], "text": "y"}))
            .unwrap_err();
        assert!(error.message.contains("`@nope`"), "{}", error.message);
        assert_eq!(error.kind, EffectErrorKind::Permanent);
    }

    #[test]
    fn refuses_malformed_messages() {
        for (args, message) in [
            (
                json!({"subject": "x", "text": "y"}),
                "a message needs at least one recipient in `to`, `cc` or `bcc`",
            ),
            (
                json!({"to": "a@example.com", "subject": "x"}),
                "a message needs `text` or `html`",
            ),
            (
                json!({"to": "a@example.com", "subject": "x\r\nBcc: e@evil.test", "text": "y"}),
                "`subject` must be one line",
            ),
            (
                json!({"to": "a@example.com", "text": "y".repeat(2000)}),
                "the message body is larger than the 1024 byte limit",
            ),
        ] {
            assert_eq!(mailer().build_message(&args).unwrap_err().message, message);
        }
    }

    #[test]
    fn refuses_a_bad_sender() {
        let settings = SmtpSettings::parse("smtp://x").unwrap();
        let error = Mailer::new(&settings, "nobody", None, Duration::from_secs(1), 10)
            .err()
            .unwrap();
        assert!(matches!(error, EmailConfigError::From(..)));
    }
}
