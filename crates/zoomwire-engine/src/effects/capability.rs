//! Capabilities: what a rule's `allow:` list grants its scripts.
//!
//! A capability is checked on every host-function call, so a rule that did
//! not ask for `slack` cannot post, whatever its script says. `http:<host>`
//! grants one host (exact, lowercase; `*.example.com` grants its subdomains).

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
    #[error("capability `{0}` must name a host only, without scheme, port, path or user")]
    NotAHost(String),
}

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
                Some(host) if host.contains(['/', ':', '@', '?', '#', ' ']) => {
                    Err(CapabilityError::NotAHost(text.into()))
                }
                Some(host) => Ok(Capability::Http(host.to_ascii_lowercase())),
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

    /// Whether `host` is one the rule allows.
    pub fn allows_host(&self, host: &str) -> bool {
        host_allowed(&self.http_hosts, host)
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

/// Whether `host` matches one of `allowed` (exact, or `*.suffix`).
pub fn host_allowed(allowed: &[String], host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    allowed
        .iter()
        .any(|pattern| match pattern.strip_prefix("*.") {
            Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
            None => *pattern == host,
        })
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
        assert!(matches!(
            Capability::parse("http:https://x.com/"),
            Err(CapabilityError::NotAHost(_))
        ));
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
