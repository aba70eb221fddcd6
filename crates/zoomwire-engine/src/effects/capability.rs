//! Capabilities: what a rule's `allow:` list grants its scripts.
//!
//! A capability is checked on every host-function call, so a rule that did
//! not ask for `slack` cannot post, whatever its script says. `http:<host>`
//! grants one host (exact, lowercase; `*.example.com` grants its subdomains)
//! on ports 80 and 443; `http:<host>:<port>` grants another port instead,
//! `http:<host>:*` any. An IP address is written as such (`http:10.0.0.5`,
//! `http:[::1]:8080`): only then may a script reach a loopback, private or
//! link-local address (see `address.rs`).

use std::fmt;
use std::sync::Arc;

/// Capabilities other than `http:<host>`.
pub const NAMED_CAPABILITIES: &[&str] =
    &["zoom.read", "zoom.write", "zoom.download", "slack", "email"];

/// One entry of `allow:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Capability {
    ZoomRead,
    ZoomWrite,
    ZoomDownload,
    Slack,
    Email,
    Http(String),
}

/// Why an `allow:` entry was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CapabilityError {
    #[error(
        "unknown capability `{0}`, expected one of: zoom.read, zoom.write, zoom.download, slack, email, http:<host>"
    )]
    Unknown(String),
    #[error("capability `{0}` needs a host name, such as http:api.example.com")]
    EmptyHost(String),
    #[error(
        "capability `{0}` must name a host and at most a port (http:api.example.com:8443), without scheme, path or user"
    )]
    NotAHost(String),
    #[error("capability `{0}` names an invalid port: use a number from 1 to 65535, or *")]
    BadPort(String),
}

/// Ports `http:<host>` grants without naming one.
pub const DEFAULT_HTTP_PORTS: [u16; 2] = [80, 443];

impl Capability {
    pub fn parse(text: &str) -> Result<Capability, CapabilityError> {
        match text {
            "zoom.read" => Ok(Capability::ZoomRead),
            "zoom.write" => Ok(Capability::ZoomWrite),
            "zoom.download" => Ok(Capability::ZoomDownload),
            "slack" => Ok(Capability::Slack),
            "email" => Ok(Capability::Email),
            _ => match text.strip_prefix("http:") {
                Some("") => Err(CapabilityError::EmptyHost(text.into())),
                Some(target) => parse_http_target(text, target),
                None => Err(CapabilityError::Unknown(text.into())),
            },
        }
    }

    /// The name used in error messages and in `required_capability`.
    pub fn name(&self) -> String {
        match self {
            Capability::ZoomRead => "zoom.read".into(),
            Capability::ZoomWrite => "zoom.write".into(),
            Capability::ZoomDownload => "zoom.download".into(),
            Capability::Slack => "slack".into(),
            Capability::Email => "email".into(),
            Capability::Http(host) => format!("http:{host}"),
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// The capabilities of one rule.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CapabilitySet {
    named: Vec<Capability>,
    http_hosts: Arc<[String]>,
}

impl CapabilitySet {
    pub fn new(capabilities: impl IntoIterator<Item = Capability>) -> CapabilitySet {
        let mut named = Vec::new();
        let mut hosts = Vec::new();
        for capability in capabilities {
            match capability {
                Capability::Http(host) => hosts.push(host),
                other => named.push(other),
            }
        }
        CapabilitySet {
            named,
            http_hosts: hosts.into(),
        }
    }

    /// Whether the named capability (as `required_capability` gives it) is held.
    /// `http` is held when any host is.
    pub fn allows(&self, capability: &str) -> bool {
        if capability == "http" {
            return !self.http_hosts.is_empty();
        }
        self.named.iter().any(|c| c.name() == capability)
    }

    /// Whether `host` is one the rule allows, on some port.
    pub fn allows_host(&self, host: &str) -> bool {
        host_allowed(&self.http_hosts, host)
    }

    /// Whether `host` on `port` is one the rule allows.
    pub fn allows_target(&self, host: &str, port: u16) -> bool {
        target_allowed(&self.http_hosts, host, port)
    }

    pub fn http_hosts(&self) -> Arc<[String]> {
        self.http_hosts.clone()
    }

    pub fn is_empty(&self) -> bool {
        self.named.is_empty() && self.http_hosts.is_empty()
    }

    /// Every capability held, as `allow:` names it (`http:<host>` per host).
    pub fn names(&self) -> Vec<String> {
        self.named
            .iter()
            .map(Capability::name)
            .chain(self.http_hosts.iter().map(|host| format!("http:{host}")))
            .collect()
    }
}

/// `host`, `host:port`, `host:*`, `[v6]` or `[v6]:port`, checked and lowercased.
fn parse_http_target(text: &str, target: &str) -> Result<Capability, CapabilityError> {
    let not_a_host = || CapabilityError::NotAHost(text.into());
    if target.contains(['/', '@', '?', '#', ' ', '\\']) {
        return Err(not_a_host());
    }
    let (host, port) = split_target(target).ok_or_else(not_a_host)?;
    let bracketed = host.starts_with('[');
    if host.is_empty() || host == "[]" || (!bracketed && host.contains(':')) {
        return Err(not_a_host());
    }
    if let Some(port) = port
        && port != "*"
        && !port.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Err(CapabilityError::BadPort(text.into()));
    }
    Ok(Capability::Http(target.to_ascii_lowercase()))
}

/// An allow-list entry's host and port (`None` when it names none).
fn split_target(target: &str) -> Option<(&str, Option<&str>)> {
    if target.starts_with('[') {
        let end = target.find(']')?;
        let (host, rest) = target.split_at(end + 1);
        return match rest {
            "" => Some((host, None)),
            _ => Some((host, Some(rest.strip_prefix(':')?))),
        };
    }
    match target.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port))),
        None => Some((target, None)),
    }
}

/// Whether `host` matches one of `allowed` (exact, or `*.suffix`), whatever
/// the port.
pub fn host_allowed(allowed: &[String], host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    allowed
        .iter()
        .any(|pattern| pattern_host_matches(pattern, &host))
}

/// Whether `host` on `port` is allowed by one of `allowed`: its host, and
/// the port it names (80 and 443 when it names none, any for `*`).
pub fn target_allowed(allowed: &[String], host: &str, port: u16) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    allowed.iter().any(|pattern| {
        let Some((_, port_rule)) = split_target(pattern) else {
            return false;
        };
        let port_ok = match port_rule {
            None => DEFAULT_HTTP_PORTS.contains(&port),
            Some("*") => true,
            Some(named) => named.parse::<u16>() == Ok(port),
        };
        port_ok && pattern_host_matches(pattern, &host)
    })
}

fn pattern_host_matches(pattern: &str, host: &str) -> bool {
    let Some((pattern, _)) = split_target(pattern) else {
        return false;
    };
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
        None => pattern == host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_capability() {
        for name in NAMED_CAPABILITIES {
            assert_eq!(Capability::parse(name).unwrap().name(), *name);
        }
        assert_eq!(
            Capability::parse("http:API.Example.com").unwrap(),
            Capability::Http("api.example.com".into())
        );
    }

    #[test]
    fn refuses_unknown_and_malformed_capabilities() {
        assert_eq!(
            Capability::parse("slak").unwrap_err().to_string(),
            "unknown capability `slak`, expected one of: zoom.read, zoom.write, zoom.download, slack, email, http:<host>"
        );
        assert!(matches!(
            Capability::parse("http:"),
            Err(CapabilityError::EmptyHost(_))
        ));
        for bad in [
            "http:https://x.com/",
            "http:a:b:c",
            "http:u@x.com",
            "http:[::1",
        ] {
            assert!(
                matches!(Capability::parse(bad), Err(CapabilityError::NotAHost(_))),
                "{bad}"
            );
        }
        for bad in [
            "http:x.com:0",
            "http:x.com:99999",
            "http:x.com:",
            "http:[::1]:x",
        ] {
            assert!(
                matches!(Capability::parse(bad), Err(CapabilityError::BadPort(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn ports_are_80_and_443_unless_named() {
        for text in [
            "http:api.test",
            "http:api.test:8443",
            "http:api.test:*",
            "http:[::1]:8080",
            "http:[::1]",
        ] {
            assert!(Capability::parse(text).is_ok(), "{text}");
        }
        let allowed: Vec<String> = ["api.test", "ops.test:8443", "any.test:*", "[::1]:8080"]
            .map(String::from)
            .to_vec();
        assert!(target_allowed(&allowed, "api.test", 443));
        assert!(target_allowed(&allowed, "api.test", 80));
        assert!(!target_allowed(&allowed, "api.test", 8080));
        assert!(target_allowed(&allowed, "ops.test", 8443));
        assert!(!target_allowed(&allowed, "ops.test", 443));
        assert!(target_allowed(&allowed, "any.test", 22));
        assert!(target_allowed(&allowed, "[::1]", 8080));
        assert!(!target_allowed(&allowed, "[::1]", 80));
        assert!(host_allowed(&allowed, "ops.test"));
    }

    #[test]
    fn checks_hosts_exactly_or_by_wildcard() {
        let set = CapabilitySet::new([
            Capability::Http("api.example.com".into()),
            Capability::Http("*.corp.test".into()),
            Capability::Slack,
        ]);
        assert!(set.allows("slack"));
        assert!(set.allows("http"));
        assert!(!set.allows("email"));
        assert!(set.allows_host("API.example.com"));
        assert!(!set.allows_host("example.com"));
        assert!(!set.allows_host("api.example.com.evil.test"));
        assert!(set.allows_host("a.corp.test"));
        assert!(!set.allows_host("corp.test"));
        assert!(!set.allows_host("evilcorp.test"));
    }
}
