//! Several nodes on one shared journal: who this node is, the leases that
//! decide which node holds each account's WebSocket, the scheduler and the
//! pruner ([`lease`]), the node's heartbeat, and the other nodes it sees.
//!
//! The [`ClusterStore`] seam is kept by the PostgreSQL journal, whose
//! server decides every lease by its own clock, so that node clocks may
//! drift; a node counts only on its own monotonic clock to stop in time
//! (see [`lease`]). With SQLite or memory there is one node and no
//! cluster: the daemon holds everything, as before.

pub mod lease;
pub mod node;

use std::time::Duration;

use serde::Serialize;

use crate::effects::BoxFuture;

pub use node::{NodeHealth, keep_heartbeat};

/// This process in the cluster: a node id (stable across restarts,
/// `ZOOMWIRE_NODE_ID`, the host name by default) and the incarnation, which
/// names this one process of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    pub id: String,
    pub incarnation: String,
}

impl NodeIdentity {
    /// `id` for this process, with a fresh incarnation.
    pub fn new(id: &str) -> NodeIdentity {
        NodeIdentity {
            id: id.to_string(),
            incarnation: format!("{}-{:016x}", std::process::id(), fastrand::u64(..)),
        }
    }
}

/// The node id when none is configured: the host's name.
pub fn default_node_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "zoomwire".to_string())
}

/// How leases and heartbeats are timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterTimings {
    /// How long a lease lasts after each renewal, by the server's clock;
    /// also how long a node may be silent before its runs are taken over.
    pub lease_ttl: Duration,
    /// How often a holder renews its leases and a node beats.
    pub renew_every: Duration,
    /// How often a node tries for a lease it does not hold.
    pub retry_every: Duration,
    /// How long before the lease could expire a holder that could not renew
    /// stops its work (on its own monotonic clock).
    pub margin: Duration,
}

impl ClusterTimings {
    /// Renewal every quarter of the lease, tries every half second, and a
    /// margin of an eighth: a crashed holder is replaced within about
    /// `ttl + 0.5 s`, a stopped one within about half a second.
    pub fn from_ttl(lease_ttl: Duration) -> ClusterTimings {
        ClusterTimings {
            lease_ttl,
            renew_every: lease_ttl / 4,
            retry_every: Duration::from_millis(500).min(lease_ttl / 4),
            margin: lease_ttl / 8,
        }
    }
}

impl Default for ClusterTimings {
    fn default() -> ClusterTimings {
        ClusterTimings::from_ttl(DEFAULT_LEASE_TTL)
    }
}

/// The default lease: 8 s, so a crashed holder is replaced within about 9 s.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(8);

/// The name of the lease for an account's WebSocket subscription (and its
/// reconciliation).
pub fn subscription_lease(account: &str) -> String {
    format!("subscription:{account}")
}

/// The lease for the cron scheduler.
pub const SCHEDULER_LEASE: &str = "scheduler";

/// The lease for pruning the journal.
pub const PRUNER_LEASE: &str = "pruner";

/// A lease as the store sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeaseInfo {
    pub name: String,
    /// The node that holds it, or held it last.
    pub node: String,
    pub epoch: i64,
    /// Milliseconds until it expires by the server's clock; zero or less: free.
    pub expires_in_ms: i64,
    /// When its holder took it, milliseconds since the epoch (server clock).
    pub acquired_at_ms: i64,
}

/// A node as the store sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerInfo {
    pub id: String,
    /// Milliseconds since its last heartbeat, by the server's clock.
    pub heartbeat_age_ms: i64,
    /// Beating and not stopped.
    pub alive: bool,
    /// Its admin server, as it announced it.
    pub admin_addr: Option<String>,
}

/// Why the store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cluster: {0}")]
pub struct ClusterError(pub String);

/// What the cluster keeps in the shared store.
pub trait ClusterStore: Send + Sync + 'static {
    /// Registers this process as the node's incarnation; an earlier one of
    /// the same id is superseded. Answers whether that earlier one was
    /// still beating.
    fn register<'a>(
        &'a self,
        node: &'a NodeIdentity,
        admin_addr: Option<String>,
    ) -> BoxFuture<'a, Result<bool, ClusterError>>;
    /// A heartbeat; `false` when another incarnation took the node id over.
    fn heartbeat<'a>(&'a self, node: &'a NodeIdentity)
    -> BoxFuture<'a, Result<bool, ClusterError>>;
    /// The node stopped: its leases are free and its runs may be taken at once.
    fn deregister<'a>(&'a self, node: &'a NodeIdentity) -> BoxFuture<'a, Result<(), ClusterError>>;
    /// Takes or renews the lease for `ttl` from the server's now: the epoch
    /// when this node holds it, `None` while another does.
    fn acquire<'a>(
        &'a self,
        lease: &'a str,
        node: &'a NodeIdentity,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<i64>, ClusterError>>;
    /// Frees the lease at once, if this node still holds it under `epoch`.
    fn release<'a>(
        &'a self,
        lease: &'a str,
        node: &'a NodeIdentity,
        epoch: i64,
    ) -> BoxFuture<'a, Result<(), ClusterError>>;
    /// Every lease, by name.
    fn leases(&self) -> BoxFuture<'_, Result<Vec<LeaseInfo>, ClusterError>>;
    /// Every node, by id; `alive` after `timeout` without a heartbeat is false.
    fn nodes(&self, timeout: Duration) -> BoxFuture<'_, Result<Vec<PeerInfo>, ClusterError>>;
}
