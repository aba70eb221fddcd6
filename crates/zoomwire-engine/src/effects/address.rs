//! Which network addresses a script's `http::request` may reach.
//!
//! An allowed host name is not enough: a name can resolve (or be rebound
//! between two lookups) to loopback, a private network or the cloud's
//! metadata service, which are then reached from inside the engine's
//! network. So names are resolved by [`GuardedResolver`], inside the HTTP
//! client that connects, and only public addresses are kept, unless the
//! rule allows the address itself (`http:127.0.0.1`, `http:[::1]`,
//! `http:10.0.0.5:8080`). An IP literal in a URL needs the same explicit
//! entry, which the capability check already demands.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::capability::host_allowed;

/// Why an address is not public, or `None` when it is.
pub fn refusal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refusal_v4(v4),
        IpAddr::V6(v6) => refusal_v6(v6),
    }
}

fn refusal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    let reason = if ip.is_loopback() {
        "loopback"
    } else if ip.is_unspecified() || a == 0 {
        "unspecified"
    } else if ip.is_private() {
        "private"
    } else if ip.is_link_local() {
        // 169.254.169.254 is the metadata service of AWS, GCP and Azure.
        "link-local (cloud metadata)"
    } else if a == 100 && (b & 0xc0) == 64 {
        // Shared address space; Alibaba Cloud's metadata is 100.100.100.200.
        "shared address space (cloud metadata)"
    } else if ip == Ipv4Addr::new(168, 63, 129, 16) {
        "cloud metadata (Azure)"
    } else if a == 192 && b == 0 && c == 0 {
        "reserved for protocol assignments"
    } else if a == 198 && (b & 0xfe) == 18 {
        "benchmarking"
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        "multicast or reserved"
    } else if ip.is_documentation() {
        "documentation"
    } else {
        return None;
    };
    Some(reason)
}

fn refusal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return refusal_v4(v4);
    }
    let segments = ip.segments();
    let reason = if ip.is_loopback() {
        "loopback"
    } else if ip.is_unspecified() {
        "unspecified"
    } else if (segments[0] & 0xfe00) == 0xfc00 {
        // fd00:ec2::254 is the metadata service of AWS.
        "unique local (private, cloud metadata)"
    } else if (segments[0] & 0xffc0) == 0xfe80 {
        "link-local"
    } else if ip.is_multicast() {
        "multicast"
    } else if segments[0] == 0x64 && segments[1] == 0xff9b {
        // NAT64: the IPv4 address it embeds decides.
        let v4 = Ipv4Addr::new(
            (segments[6] >> 8) as u8,
            segments[6] as u8,
            (segments[7] >> 8) as u8,
            segments[7] as u8,
        );
        return refusal_v4(v4);
    } else if segments[0] == 0x2002 {
        // 6to4: the IPv4 address it embeds decides.
        let v4 = Ipv4Addr::new(
            (segments[1] >> 8) as u8,
            segments[1] as u8,
            (segments[2] >> 8) as u8,
            segments[2] as u8,
        );
        return refusal_v4(v4);
    } else if segments[0] == 0x2001 && segments[1] == 0x0db8 {
        "documentation"
    } else {
        return None;
    };
    Some(reason)
}

/// An address as an allow-list names it: `127.0.0.1`, `[::1]`.
pub fn allow_list_form(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// Whether a script of a rule allowing `allowed` may connect to `ip`.
pub fn address_allowed(allowed: &[String], ip: IpAddr) -> bool {
    refusal(ip).is_none() || host_allowed(allowed, &allow_list_form(ip))
}

/// A host name resolved only to addresses the rule may not reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedAddress {
    pub host: String,
    /// Each refused address, with why.
    pub addresses: Vec<(IpAddr, &'static str)>,
}

impl fmt::Display for RefusedAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let listed: Vec<String> = self
            .addresses
            .iter()
            .map(|(ip, why)| format!("{} ({why})", allow_list_form(*ip)))
            .collect();
        let example = self
            .addresses
            .first()
            .map(|(ip, _)| allow_list_form(*ip))
            .unwrap_or_default();
        write!(
            f,
            "host `{}` resolves only to addresses scripts may not reach: {}; if that is intended, allow the address itself (http:{example})",
            self.host,
            listed.join(", ")
        )
    }
}

impl std::error::Error for RefusedAddress {}

/// Resolves names with the system's resolver and keeps only the addresses
/// the rule may reach.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    allowed: Arc<[String]>,
}

impl GuardedResolver {
    pub fn new(allowed: Arc<[String]>) -> GuardedResolver {
        GuardedResolver { allowed }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allowed = self.allowed.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (kept, refused) = split_addresses(&allowed, &resolved);
            if kept.is_empty() && !refused.is_empty() {
                return Err(Box::new(RefusedAddress {
                    host,
                    addresses: refused,
                })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

/// The addresses kept, and those refused with why.
fn split_addresses(
    allowed: &[String],
    resolved: &[SocketAddr],
) -> (Vec<SocketAddr>, Vec<(IpAddr, &'static str)>) {
    let mut kept = Vec::new();
    let mut refused = Vec::new();
    for address in resolved {
        let ip = address.ip();
        match refusal(ip) {
            Some(why) if !host_allowed(allowed, &allow_list_form(ip)) => refused.push((ip, why)),
            _ => kept.push(*address),
        }
    }
    (kept, refused)
}

/// The [`RefusedAddress`] among an error's causes, if one is.
pub fn refused_address_in<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a RefusedAddress> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if let Some(refused) = current.downcast_ref::<RefusedAddress>() {
            return Some(refused);
        }
        cause = current.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn refuses_every_address_that_is_not_public() {
        for (text, why) in [
            ("127.0.0.1", "loopback"),
            ("127.5.6.7", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local (cloud metadata)"),
            ("100.100.100.200", "shared address space (cloud metadata)"),
            ("168.63.129.16", "cloud metadata (Azure)"),
            ("224.0.0.1", "multicast or reserved"),
            ("255.255.255.255", "multicast or reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fd00:ec2::254", "unique local (private, cloud metadata)"),
            ("fe80::1", "link-local"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local (cloud metadata)"),
            ("64:ff9b::a9fe:a9fe", "link-local (cloud metadata)"),
            ("2002:7f00:1::", "loopback"),
        ] {
            assert_eq!(refusal(ip(text)), Some(why), "{text}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "100.128.0.1"] {
            assert_eq!(refusal(ip(public)), None, "{public}");
        }
    }

    #[test]
    fn an_address_the_rule_names_is_allowed() {
        let allowed = vec!["127.0.0.1".to_string(), "[::1]:8080".to_string()];
        assert!(address_allowed(&allowed, ip("127.0.0.1")));
        assert!(address_allowed(&allowed, ip("::1")));
        assert!(!address_allowed(&allowed, ip("127.0.0.2")));
        assert!(address_allowed(&allowed, ip("8.8.8.8")));
        let resolved: Vec<SocketAddr> = ["127.0.0.1:0", "10.0.0.1:0", "8.8.8.8:0"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let (kept, refused) = split_addresses(&allowed, &resolved);
        assert_eq!(kept.len(), 2);
        assert_eq!(refused, vec![(ip("10.0.0.1"), "private")]);
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_that_points_inside() {
        let resolver = GuardedResolver::new(Arc::from(vec!["localhost".to_string()]));
        let name: Name = "localhost".parse().unwrap();
        let error = resolver.resolve(name).await.err().unwrap();
        let refused = refused_address_in(&*error).unwrap();
        assert_eq!(refused.host, "localhost");
        assert!(
            error
                .to_string()
                .contains("allow the address itself (http:"),
            "{error}"
        );
        let resolver = GuardedResolver::new(Arc::from(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "[::1]".to_string(),
        ]));
        let addresses: Vec<SocketAddr> = resolver
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(
            addresses.iter().all(|a| a.ip().is_loopback()),
            "{addresses:?}"
        );
    }
}
