//! The daemon as one node of several (`ZOOMWIRE_JOURNAL=postgres`): it
//! registers, beats, and runs each account's sources, the scheduler and
//! the journal's pruner only while it holds their leases. Every node runs
//! rules, accepts webhooks and resumes the runs of nodes gone silent; the
//! journal dedupes what two nodes both receive.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::DaemonError;
use super::sources::AccountSources;
use crate::cluster::lease::{LeaseKeeper, hold_lease};
use crate::cluster::{
    ClusterStore, ClusterTimings, NodeHealth, NodeIdentity, PRUNER_LEASE, keep_heartbeat,
    subscription_lease,
};
use crate::journal::postgres::PostgresJournal;

/// This node in the cluster.
pub(super) struct Cluster {
    store: Arc<dyn ClusterStore>,
    journal: PostgresJournal,
    pub health: NodeHealth,
    timings: ClusterTimings,
}

impl Cluster {
    pub fn new(journal: PostgresJournal, node: NodeIdentity, timings: ClusterTimings) -> Cluster {
        Cluster {
            store: Arc::new(journal.clone()),
            journal,
            health: NodeHealth::new(node),
            timings,
        }
    }

    pub fn node(&self) -> &NodeIdentity {
        &self.health.node
    }

    /// Registers this process as the node and starts its heartbeat.
    pub async fn join(
        &self,
        admin_addr: String,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<(), DaemonError> {
        let earlier_alive = self
            .store
            .register(self.node(), Some(admin_addr))
            .await
            .map_err(|e| DaemonError::Journal(e.to_string()))?;
        if earlier_alive {
            tracing::warn!(
                node = %self.node().id,
                "this node id was still beating in another process: that process stops; if it was not a restart of this node, give each node its own ZOOMWIRE_NODE_ID"
            );
        }
        tasks.spawn(keep_heartbeat(
            self.store.clone(),
            self.health.clone(),
            self.timings,
            shutdown.clone(),
        ));
        Ok(())
    }

    /// Runs `work` during each term this node holds `lease`.
    pub fn under_lease<W, Fut>(
        &self,
        lease: &str,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
        work: W,
    ) where
        W: FnMut(CancellationToken, i64) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let keeper = LeaseKeeper {
            store: self.store.clone(),
            node: self.node().clone(),
            name: lease.to_string(),
            timings: self.timings,
            held: self.health.held.clone(),
        };
        tasks.spawn(hold_lease(keeper, shutdown.clone(), work));
    }

    /// Runs the account's sources (its WebSocket above all) only while this
    /// node holds the account's lease.
    pub fn run_account(
        &self,
        sources: AccountSources,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        let lease = subscription_lease(&sources.name);
        self.under_lease(&lease, tasks, shutdown, move |token, _epoch| {
            sources.clone().run(token)
        });
    }

    /// Prunes the journal every `interval` while this node holds the pruner lease.
    pub fn run_pruner(
        &self,
        interval: Duration,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        let journal = self.journal.clone();
        self.under_lease(PRUNER_LEASE, tasks, shutdown, move |token, _epoch| {
            let journal = journal.clone();
            async move {
                loop {
                    match journal.prune().await {
                        Ok(report) if report != Default::default() => {
                            tracing::info!(?report, "journal pruned");
                        }
                        Ok(_) => {}
                        Err(error) => tracing::warn!(error = %error, "journal pruning failed"),
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = token.cancelled() => return,
                    }
                }
            }
        });
    }

    /// Says the node stopped: its leases are free and the runs it left
    /// unfinished may be taken by the other nodes at once.
    pub async fn leave(&self) {
        if let Err(error) = self.store.deregister(self.node()).await {
            tracing::warn!(node = %self.node().id, error = %error, "cannot mark the node stopped: the others wait for its heartbeat to age");
        }
    }
}
