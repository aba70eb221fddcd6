//! The node's heartbeat, and what it knows of the cluster for `/healthz`
//! and the page: its id, the leases it holds, the other nodes it sees.
//!
//! A heartbeat that finds another process registered under this node's id
//! (a second process started with the same `ZOOMWIRE_NODE_ID`, or this one
//! restarted while the old one still ran) stops this daemon: two processes
//! writing as one node would defeat every fence.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::lease::HeldLeases;
use super::{ClusterStore, ClusterTimings, NodeIdentity, PeerInfo};

/// What this node knows of the cluster, shared with the admin server.
#[derive(Debug, Clone)]
pub struct NodeHealth {
    pub node: NodeIdentity,
    pub held: HeldLeases,
    peers: Arc<Mutex<Vec<PeerInfo>>>,
}

/// The cluster part of `/healthz`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    pub node: String,
    pub incarnation: String,
    /// The leases this node holds, with their epochs.
    pub leases: BTreeMap<String, i64>,
    /// Every node the store knows, this one included.
    pub peers: Vec<PeerInfo>,
}

impl NodeHealth {
    pub fn new(node: NodeIdentity) -> NodeHealth {
        NodeHealth {
            node,
            held: HeldLeases::default(),
            peers: Arc::default(),
        }
    }

    /// Whether this node holds the lease now.
    pub fn holds(&self, lease: &str) -> bool {
        self.held.snapshot().contains_key(lease)
    }

    pub fn report(&self) -> ClusterReport {
        ClusterReport {
            node: self.node.id.clone(),
            incarnation: self.node.incarnation.clone(),
            leases: self.held.snapshot(),
            peers: self.lock_peers().clone(),
        }
    }

    fn set_peers(&self, peers: Vec<PeerInfo>) {
        let alive = peers.iter().filter(|p| p.alive).count();
        metrics::gauge!("zoomwire_cluster_nodes_alive").set(alive as f64);
        *self.lock_peers() = peers;
    }

    fn lock_peers(&self) -> parking_lot::MutexGuard<'_, Vec<PeerInfo>> {
        self.peers.lock()
    }
}

/// Beats every `renew_every` and refreshes the list of peers, until
/// `shutdown`; cancels `shutdown` if another process took the node id.
pub async fn keep_heartbeat(
    store: Arc<dyn ClusterStore>,
    health: NodeHealth,
    timings: ClusterTimings,
    shutdown: CancellationToken,
) {
    let mut failing = false;
    loop {
        match store.heartbeat(&health.node).await {
            Ok(true) => failing = false,
            Ok(false) => {
                tracing::error!(
                    node = %health.node.id,
                    "another process registered as this node (same ZOOMWIRE_NODE_ID): stopping; give every node its own id"
                );
                shutdown.cancel();
                return;
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(node = %health.node.id, error = %error, "heartbeat failed");
                }
                failing = true;
            }
        }
        if let Ok(peers) = store.nodes(timings.lease_ttl).await {
            health.set_peers(peers);
        }
        tokio::select! {
            _ = tokio::time::sleep(timings.renew_every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
