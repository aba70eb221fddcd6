//! Parsers for the kinds of values settings hold: URLs, socket addresses,
//! durations, byte sizes, names and mail addresses.
//!
//! Each takes the text as written and returns a message fit to follow the
//! setting's name. Parsers of secret values (`secret_url`) never quote their
//! input; the others quote it to help the user find the typo.

use std::net::SocketAddr;
use std::time::Duration;

use url::Url;

pub use crate::duration::parse_duration;

/// A URL whose scheme is one of `schemes`.
pub fn parse_url(text: &str, schemes: &[&str]) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    check_url(&url, schemes)?;
    Ok(url)
}

/// Like [`parse_url`] for a URL that holds a secret (a Slack webhook, an SMTP
/// password): the message never repeats the text.
pub fn parse_secret_url(text: &str, schemes: &[&str]) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    check_url(&url, schemes)?;
    Ok(url)
}

fn check_url(url: &Url, schemes: &[&str]) -> Result<(), String> {
    if !schemes.contains(&url.scheme()) {
        return Err(format!(
            "URL scheme `{}` is not supported, expected {}",
            url.scheme(),
            schemes
                .iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(" or ")
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("URL has no host".into());
    }
    Ok(())
}

/// `host:port` with a literal IP address, such as `127.0.0.1:9797` or `[::1]:9797`.
pub fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!(
            "`{text}` is not an address, expected an IP address and a port such as 127.0.0.1:9797"
        )
    })
}

/// A duration longer than zero (`500ms`, `30s`, `5m`, `2h`, `1d`).
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err(format!("`{text}` must be longer than zero"));
    }
    Ok(duration)
}

/// A byte size larger than zero: a number of bytes, or a number with a unit
/// `B`, `KB`, `KiB`, `MB`, `MiB`, `GB` or `GiB`.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let expected = || {
        format!(
            "invalid size `{text}`, expected a number of bytes or a number with a unit such as 512KiB or 1MiB"
        )
    };
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let number: usize = number.parse().map_err(|_| expected())?;
    let factor: usize = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" => 1 << 10,
        "mb" => 1_000_000,
        "mib" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return Err(expected()),
    };
    let size = number.checked_mul(factor).ok_or_else(expected)?;
    if size == 0 {
        return Err(format!("`{text}` must be larger than zero"));
    }
    Ok(size)
}

/// A name used in logs, metrics labels and event sources: letters, digits, `-`, `_`.
pub fn parse_name(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(text.to_string())
    } else {
        Err(format!(
            "`{text}` is not a valid name, expected up to 64 letters, digits, `-` or `_`"
        ))
    }
}

/// An identifier Zoom issued (account id, client id, subscription id): no spaces.
pub fn parse_identifier(text: &str) -> Result<String, String> {
    if text.chars().any(char::is_whitespace) {
        return Err("must not contain spaces".into());
    }
    Ok(text.to_string())
}

/// `true`/`false` (also `on`/`off`, `yes`/`no`, `1`/`0`).
pub fn parse_switch(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" => Ok(true),
        "false" | "off" | "no" | "0" => Ok(false),
        _ => Err(format!("`{text}` is not a switch, expected true or false")),
    }
}

/// A WebSocket subscription id, or the whole endpoint URL the Marketplace
/// shows once a subscription is saved (its `subscriptionId` is taken).
pub fn parse_subscription_id(text: &str) -> Result<String, String> {
    if text.contains("://") {
        let endpoint = crate::zoom::websocket::parse_endpoint(text)
            .map_err(|e| format!("`{text}` is not a valid URL: {e}"))?;
        return endpoint
            .subscription_id
            .ok_or_else(|| "the URL has no `subscriptionId` parameter".to_string());
    }
    parse_identifier(text)
}

/// A sender such as `zoomwire@example.com` or `Zoomwire <zoomwire@example.com>`.
pub fn parse_mailbox(text: &str) -> Result<String, String> {
    text.parse::<lettre::message::Mailbox>()
        .map(|_| text.to_string())
        .map_err(|e| format!("`{text}` is not a mail address: {e}"))
}

/// An SMTP relay URL (`smtp://user:pass@host:587`, `smtps://...`,
/// `?tls=none|opportunistic|starttls|required`), checked by the mailer's own
/// parser so that what loads is what sends. Its messages never show the password.
pub fn parse_smtp_url(text: &str) -> Result<(), String> {
    crate::effects::email::SmtpSettings::parse(text)
        .map(|_| ())
        .map_err(|error| {
            let message = error.to_string();
            message
                .strip_prefix("SMTP_URL ")
                .map(str::to_string)
                .unwrap_or(message)
        })
}

/// A URL fit for logs: scheme, host and port only (no user, password, path or query).
pub fn redacted_url(url: &Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(port) => format!("{}://{host}:{port}/[redacted]", url.scheme()),
        None => format!("{}://{host}/[redacted]", url.scheme()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_checks_their_scheme() {
        let url = parse_url("https://api.zoom.us/v2", &["http", "https"]).unwrap();
        assert_eq!(url.path(), "/v2");
        assert_eq!(
            parse_url("ws://x", &["http", "https"]).unwrap_err(),
            "URL scheme `ws` is not supported, expected `http` or `https`"
        );
        assert_eq!(
            parse_url("zoom.us", &["https"]).unwrap_err(),
            "`zoom.us` is not a URL: relative URL without a base"
        );
    }

    #[test]
    fn secret_urls_are_never_quoted() {
        let error =
            parse_secret_url("hooks.slack.com/services/T0/B0/secretpart", &["https"]).unwrap_err();
        assert!(!error.contains("secretpart"), "{error}");
        parse_smtp_url("smtp://user:pass@mail.example.com:587?tls=required").unwrap();
        let smtp = Url::parse("smtp://user:pass@mail.example.com:587").unwrap();
        assert_eq!(
            redacted_url(&smtp),
            "smtp://mail.example.com:587/[redacted]"
        );
        assert_eq!(
            parse_smtp_url("https://u:pass@mail.example.com").unwrap_err(),
            "scheme `https` is not smtp or smtps"
        );
        assert_eq!(
            parse_smtp_url("smtp://u:pass@mail.example.com?tls=maybe").unwrap_err(),
            "option `tls=maybe` is not one of none, opportunistic, starttls, required"
        );
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert!(parse_size("0").is_err());
        assert!(parse_size("1 lightyear").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn parses_durations_addresses_names_and_mailboxes() {
        assert_eq!(parse_positive_duration("30s"), Ok(Duration::from_secs(30)));
        assert!(parse_positive_duration("0s").is_err());
        assert!(parse_positive_duration("30").is_err());
        assert_eq!(parse_socket_addr("127.0.0.1:9797").unwrap().port(), 9797);
        assert!(parse_socket_addr("localhost:9797").is_err());
        assert_eq!(parse_name("sales-emea_2"), Ok("sales-emea_2".into()));
        assert!(parse_name("has space").is_err());
        assert!(parse_mailbox("Zoomwire <zw@example.com>").is_ok());
        assert!(parse_mailbox("not an address").is_err());
        assert!(parse_identifier("abc def").is_err());
    }
}
