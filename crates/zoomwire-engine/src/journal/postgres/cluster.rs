//! The cluster's tables: nodes and their heartbeats, and leases, each
//! decided in one statement by the server's clock (`now()`), so that node
//! clocks may drift.
//!
//! A lease is taken when it is free or expired, renewed by the incarnation
//! that holds it, and taken at once by a new incarnation of the same node
//! id (a restarted node) once that incarnation has registered. Its epoch
//! grows whenever the holding incarnation changes.

use std::time::Duration;

use super::{Db, PostgresJournal};
use crate::cluster::{ClusterError, ClusterStore, LeaseInfo, NodeIdentity, PeerInfo};
use crate::effects::BoxFuture;
use crate::engine::journal::JournalError;

impl PostgresJournal {
    async fn cluster<T, F>(&self, query: F) -> Result<T, ClusterError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, JournalError>> + Send + 'static,
    {
        self.inner
            .bridge
            .run(query)
            .await
            .map_err(|e| ClusterError(e.0))
    }
}

impl ClusterStore for PostgresJournal {
    fn register<'a>(
        &'a self,
        node: &'a NodeIdentity,
        admin_addr: Option<String>,
    ) -> BoxFuture<'a, Result<bool, ClusterError>> {
        let (db, node, timeout) = (self.db(), node.clone(), self.db().node_timeout_secs());
        Box::pin(self.cluster(async move { register(&db, &node, admin_addr, timeout).await }))
    }

    fn heartbeat<'a>(
        &'a self,
        node: &'a NodeIdentity,
    ) -> BoxFuture<'a, Result<bool, ClusterError>> {
        let (db, node) = (self.db(), node.clone());
        Box::pin(self.cluster(async move {
            let client = db.client().await?;
            let beat = client
                .execute(
                    "UPDATE zoomwire.nodes SET heartbeat_at = now()
                     WHERE id = $1 AND incarnation = $2",
                    &[&node.id, &node.incarnation],
                )
                .await
                .map_err(|e| db.error(e))?;
            Ok(beat == 1)
        }))
    }

    fn deregister<'a>(&'a self, node: &'a NodeIdentity) -> BoxFuture<'a, Result<(), ClusterError>> {
        let (db, node) = (self.db(), node.clone());
        Box::pin(self.cluster(async move {
            let client = db.client().await?;
            client
                .execute(
                    "UPDATE zoomwire.leases SET expires_at = now()
                     WHERE incarnation = $1 AND expires_at > now()",
                    &[&node.incarnation],
                )
                .await
                .map_err(|e| db.error(e))?;
            client
                .execute(
                    "UPDATE zoomwire.nodes SET stopped_at = now()
                     WHERE id = $1 AND incarnation = $2",
                    &[&node.id, &node.incarnation],
                )
                .await
                .map_err(|e| db.error(e))?;
            Ok(())
        }))
    }

    fn acquire<'a>(
        &'a self,
        lease: &'a str,
        node: &'a NodeIdentity,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<i64>, ClusterError>> {
        let (db, lease, node) = (self.db(), lease.to_string(), node.clone());
        Box::pin(self.cluster(async move {
            let client = db.client().await?;
            let statement = client
                .prepare_cached(
                    "INSERT INTO zoomwire.leases AS l
                         (name, node, incarnation, epoch, acquired_at, renewed_at, expires_at)
                     VALUES ($1, $2, $3, 1, now(), now(), now() + make_interval(secs => $4))
                     ON CONFLICT (name) DO UPDATE SET
                         epoch = CASE WHEN l.incarnation = excluded.incarnation
                                      THEN l.epoch ELSE l.epoch + 1 END,
                         acquired_at = CASE WHEN l.incarnation = excluded.incarnation
                                            THEN l.acquired_at ELSE now() END,
                         node = excluded.node, incarnation = excluded.incarnation,
                         renewed_at = now(), expires_at = excluded.expires_at
                     WHERE l.incarnation = excluded.incarnation
                        OR l.expires_at <= now()
                        OR (l.node = excluded.node AND EXISTS (
                               SELECT 1 FROM zoomwire.nodes n
                               WHERE n.id = excluded.node AND n.incarnation = excluded.incarnation))
                     RETURNING epoch",
                )
                .await
                .map_err(|e| db.error(e))?;
            let row = client
                .query_opt(
                    &statement,
                    &[&lease, &node.id, &node.incarnation, &ttl.as_secs_f64()],
                )
                .await
                .map_err(|e| db.error(e))?;
            Ok(row.map(|row| row.get(0)))
        }))
    }

    fn release<'a>(
        &'a self,
        lease: &'a str,
        node: &'a NodeIdentity,
        epoch: i64,
    ) -> BoxFuture<'a, Result<(), ClusterError>> {
        let (db, lease, node) = (self.db(), lease.to_string(), node.clone());
        Box::pin(self.cluster(async move {
            let client = db.client().await?;
            client
                .execute(
                    "UPDATE zoomwire.leases SET expires_at = now()
                     WHERE name = $1 AND incarnation = $2 AND epoch = $3 AND expires_at > now()",
                    &[&lease, &node.incarnation, &epoch],
                )
                .await
                .map_err(|e| db.error(e))?;
            Ok(())
        }))
    }

    fn leases(&self) -> BoxFuture<'_, Result<Vec<LeaseInfo>, ClusterError>> {
        let db = self.db();
        Box::pin(self.cluster(async move {
            let client = db.client().await?;
            let rows = client
                .query(
                    "SELECT name, node, epoch,
                            (extract(epoch FROM expires_at - now()) * 1000)::bigint,
                            (extract(epoch FROM acquired_at) * 1000)::bigint
                     FROM zoomwire.leases ORDER BY name",
                    &[],
                )
                .await
                .map_err(|e| db.error(e))?;
            Ok(rows
                .iter()
                .map(|row| LeaseInfo {
                    name: row.get(0),
                    node: row.get(1),
                    epoch: row.get(2),
                    expires_in_ms: row.get(3),
                    acquired_at_ms: row.get(4),
                })
                .collect())
        }))
    }

    fn nodes(&self, timeout: Duration) -> BoxFuture<'_, Result<Vec<PeerInfo>, ClusterError>> {
        let db = self.db();
        Box::pin(self.cluster(async move {
            let client = db.client().await?;
            let rows = client
                .query(
                    "SELECT id, (extract(epoch FROM now() - heartbeat_at) * 1000)::bigint,
                            stopped_at IS NULL
                                AND heartbeat_at > now() - make_interval(secs => $1),
                            admin_addr
                     FROM zoomwire.nodes ORDER BY id",
                    &[&timeout.as_secs_f64()],
                )
                .await
                .map_err(|e| db.error(e))?;
            Ok(rows
                .iter()
                .map(|row| PeerInfo {
                    id: row.get(0),
                    heartbeat_age_ms: row.get(1),
                    alive: row.get(2),
                    admin_addr: row.get(3),
                })
                .collect())
        }))
    }
}

/// Registers the incarnation; answers whether an earlier one was still beating.
async fn register(
    db: &Db,
    node: &NodeIdentity,
    admin_addr: Option<String>,
    timeout: f64,
) -> Result<bool, JournalError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(|e| db.error(e))?;
    let earlier_alive = tx
        .query_opt(
            "SELECT 1 FROM zoomwire.nodes
             WHERE id = $1 AND incarnation <> $2 AND stopped_at IS NULL
               AND heartbeat_at > now() - make_interval(secs => $3)
             FOR UPDATE",
            &[&node.id, &node.incarnation, &timeout],
        )
        .await
        .map_err(|e| db.error(e))?
        .is_some();
    tx.execute(
        "INSERT INTO zoomwire.nodes (id, incarnation, started_at, heartbeat_at, stopped_at, admin_addr)
         VALUES ($1, $2, now(), now(), NULL, $3)
         ON CONFLICT (id) DO UPDATE SET incarnation = excluded.incarnation, started_at = now(),
             heartbeat_at = now(), stopped_at = NULL, admin_addr = excluded.admin_addr",
        &[&node.id, &node.incarnation, &admin_addr],
    )
    .await
    .map_err(|e| db.error(e))?;
    tx.commit().await.map_err(|e| db.error(e))?;
    Ok(earlier_alive)
}
