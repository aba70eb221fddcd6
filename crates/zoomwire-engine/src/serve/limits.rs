//! What the public endpoint (the webhook server) allows each client and all
//! of them together, and the bookkeeping that enforces the per-address part.
//!
//! Three clocks bound a connection: the request head must arrive within
//! `header_timeout` (also the longest an idle kept-alive connection stays
//! open), the body within `body_timeout` of the head, and the whole request
//! within `request_timeout`. Counts bound the rest: `max_connections` open
//! at once (never more than the process's open-file limit allows, with room
//! left for the store, the WebSocket and the admin server), `max_requests`
//! handled at once, and per client address `per_address_connections` and a
//! request rate of `per_address_rate` a second (bursts of
//! `per_address_burst`). A per-address limit of 0 turns it off: behind a
//! reverse proxy every request comes from the proxy's address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;

use crate::event::MAX_EVENT_BYTES;

/// File descriptors kept free for everything but the endpoint's connections.
pub const RESERVED_FILES: u64 = 256;

/// The public endpoint's limits; [`Default`] holds the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointLimits {
    /// Largest accepted body, in bytes.
    pub max_body: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub max_requests: usize,
    /// 0: no per-address connection limit.
    pub per_address_connections: usize,
    /// Requests a second per address; 0: no per-address rate limit.
    pub per_address_rate: u32,
    pub per_address_burst: u32,
}

impl Default for EndpointLimits {
    fn default() -> EndpointLimits {
        EndpointLimits {
            max_body: MAX_EVENT_BYTES,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(15),
            max_connections: 4096,
            max_requests: 256,
            per_address_connections: 64,
            per_address_rate: 50,
            per_address_burst: 100,
        }
    }
}

impl EndpointLimits {
    /// `max_connections`, lowered to what `open_files` (the soft
    /// RLIMIT_NOFILE) leaves after [`RESERVED_FILES`].
    pub fn connections_within(&self, open_files: Option<u64>) -> usize {
        let Some(open_files) = open_files else {
            return self.max_connections;
        };
        let room = open_files.saturating_sub(RESERVED_FILES).max(1);
        self.max_connections
            .min(usize::try_from(room).unwrap_or(usize::MAX))
    }

    /// The per-address rate limiter, unless turned off.
    pub fn address_rate_limiter(&self) -> Option<DefaultKeyedRateLimiter<IpAddr>> {
        let rate = NonZeroU32::new(self.per_address_rate)?;
        let burst = NonZeroU32::new(self.per_address_burst.max(self.per_address_rate))?;
        Some(RateLimiter::keyed(
            Quota::per_second(rate).allow_burst(burst),
        ))
    }
}

/// Raises the soft limit on open files to the hard limit, so that many
/// connections do not starve the store, the WebSocket and the admin server of
/// descriptors. Returns the soft limit in force afterwards (`None` where the
/// platform has none).
pub fn raise_open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let (soft, hard) = rlimit::Resource::NOFILE.get().ok()?;
        match rlimit::increase_nofile_limit(hard) {
            Ok(raised) => {
                if raised > soft {
                    tracing::info!(from = soft, to = raised, "raised the open files limit");
                }
                Some(raised)
            }
            Err(error) => {
                tracing::warn!(soft, hard, error = %error, "cannot raise the open files limit");
                Some(soft)
            }
        }
    }
    #[cfg(not(unix))]
    None
}

/// Open connections per client address.
#[derive(Clone)]
pub struct AddressConnections {
    limit: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// A connection counted against its address until dropped.
pub struct AddressSlot {
    address: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl AddressConnections {
    /// `limit` 0: any number.
    pub fn new(limit: usize) -> AddressConnections {
        AddressConnections {
            limit,
            open: Arc::default(),
        }
    }

    /// Counts a new connection from `address`, or `None` when it already has
    /// `limit` open.
    pub fn open(&self, address: IpAddr) -> Option<AddressSlot> {
        let address = address.to_canonical();
        let mut open = self.open.lock();
        let count = open.entry(address).or_default();
        if self.limit > 0 && *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            address,
            open: self.open.clone(),
        })
    }

    /// Connections open from `address` now.
    pub fn count(&self, address: IpAddr) -> usize {
        self.open
            .lock()
            .get(&address.to_canonical())
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock();
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_limit_and_gets_room_back_as_they_close() {
        let book = AddressConnections::new(2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let first = book.open(a).unwrap();
        let _second = book.open(a).unwrap();
        assert!(book.open(a).is_none(), "a third from the same address");
        assert!(book.open(b).is_some(), "another address is not affected");
        drop(first);
        let _third = book.open(a).expect("room again");
        // An IPv4 address seen through an IPv6 socket is the same client.
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert_eq!(book.count(mapped), 2);
    }

    #[test]
    fn zero_means_no_per_address_limit() {
        let book = AddressConnections::new(0);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let slots: Vec<_> = (0..1000).map(|_| book.open(a).unwrap()).collect();
        assert_eq!(book.count(a), 1000);
        drop(slots);
        assert_eq!(book.count(a), 0);
        assert!(book.open.lock().is_empty(), "no entry left behind");
        let limits = EndpointLimits {
            per_address_rate: 0,
            ..EndpointLimits::default()
        };
        assert!(limits.address_rate_limiter().is_none());
    }

    #[test]
    fn connections_leave_room_for_the_rest_of_the_process() {
        let limits = EndpointLimits::default();
        assert_eq!(limits.connections_within(None), 4096);
        assert_eq!(limits.connections_within(Some(1_048_576)), 4096);
        assert_eq!(limits.connections_within(Some(1024)), 768);
        assert_eq!(limits.connections_within(Some(10)), 1);
    }

    #[test]
    fn the_rate_limiter_allows_a_burst_then_refuses() {
        let limits = EndpointLimits {
            per_address_rate: 1,
            per_address_burst: 3,
            ..EndpointLimits::default()
        };
        let limiter = limits.address_rate_limiter().unwrap();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.check_key(&a).is_ok());
        }
        assert!(limiter.check_key(&a).is_err());
        assert!(limiter.check_key(&b).is_ok());
    }
}
