//! The shared journal of several nodes (`ZOOMWIRE_JOURNAL=postgres`): the
//! same seams as the SQLite store ([`Journal`], effect records, rule
//! state, run history, known events) on a PostgreSQL server, so that
//! several `zoomwire run` processes share events, runs and state.
//!
//! An event and its runs are one transaction, deduplicated by the server
//! (an upsert on the dedupe table decides, whichever node asks first), as
//! in SQLite. Every run belongs to the node that wrote it; a node takes
//! over the unfinished runs of nodes gone silent (`unfinished_runs`), and a
//! node whose runs were taken over can no longer record them (see
//! `writes.rs`). The tables for leases and nodes (`cluster.rs`) live here
//! too. Queries run on the journal's own runtime (`bridge.rs`) over a pool
//! of connections; a connection lost (a server restart) is replaced on the
//! next query, and a write that fails answers a [`JournalError`] so that
//! intake pauses and retries, as on a full disk.
//!
//! [`Journal`]: crate::engine::journal::Journal

mod bridge;
mod cluster;
mod connect;
mod engine_traits;
mod prune;
mod reads;
mod schema;
mod writes;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use deadpool_postgres::{Object, Pool};
use parking_lot::Mutex;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::engine::journal::{JournalError, RunStatus};
use crate::event::Event;
use crate::journal::codec::{duration_nanos, to_nanos};
use crate::journal::history::{RuleActivity, RunPage, RunQuery, RunTrace, TraceQuery};
use crate::journal::seal::{SealKey, SealKeyError};
use crate::journal::{
    JournalOptions, PruneReport, RequeueOutcome, RunDetail, RunFilter, RunSummary, StoreCounts,
};
use bridge::Bridge;

pub use connect::DatabaseTarget;
pub use schema::{MigrateError, SCHEMA_VERSION as POSTGRES_SCHEMA_VERSION};

/// How the PostgreSQL journal behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// This node's id: the runs it writes are its own.
    pub node: String,
    /// Most connections to the server.
    pub pool_size: usize,
    /// A node silent this long (by the server's clock) is gone: its
    /// unfinished runs may be taken over.
    pub node_timeout: Duration,
    /// The dedupe window, retention and row budgets (the SQLite-only
    /// settings are ignored; pruning runs when [`PostgresJournal::prune`]
    /// is called, under the cluster's pruner lease).
    pub limits: JournalOptions,
    /// The folder of the key that seals what the journal keeps but never
    /// shows (`seal.key`, as with SQLite: effects' unredacted results,
    /// download tokens). Nodes sharing a database need the same key file to
    /// open what another node sealed; without one, a key made for this
    /// process only (what it seals opens nowhere else).
    pub seal_dir: Option<PathBuf>,
}

impl Default for PostgresOptions {
    fn default() -> PostgresOptions {
        PostgresOptions {
            node: "zoomwire".into(),
            pool_size: 16,
            node_timeout: Duration::from_secs(10),
            limits: JournalOptions::default(),
            seal_dir: None,
        }
    }
}

/// Why the PostgreSQL journal could not be opened. Never shows the URL.
#[derive(Debug, thiserror::Error)]
pub enum PostgresOpenError {
    #[error("cannot start the postgres journal's threads: {0}")]
    Thread(#[source] std::io::Error),
    #[error("postgres {server}: {detail}")]
    Connect { server: String, detail: String },
    #[error(transparent)]
    SealKey(#[from] SealKeyError),
    #[error("postgres {server}: {source}")]
    Migrate {
        server: String,
        #[source]
        source: MigrateError,
    },
}

/// What every query needs: cheap to clone into the journal's tasks.
#[derive(Clone)]
pub(crate) struct Db {
    pool: Pool,
    node: Arc<str>,
    /// Nanoseconds.
    dedupe_window: i64,
    node_timeout: Duration,
    server: Arc<str>,
    /// Seals download tokens and unredacted effect results.
    seal: Arc<SealKey>,
    /// Live state keys one rule may hold.
    max_state_keys: usize,
}

impl Db {
    async fn client(&self) -> Result<Object, JournalError> {
        self.pool.get().await.map_err(|e| self.error(e))
    }

    fn error(&self, error: impl std::error::Error) -> JournalError {
        JournalError(format!("postgres {}: {}", self.server, explain(&error)))
    }

    fn node_timeout_secs(&self) -> f64 {
        self.node_timeout.as_secs_f64()
    }

    /// Runs an idempotent write, and again while the server cannot be
    /// reached (a restart, a failover) for up to [`WRITE_PATIENCE`], then
    /// once more when it answers: a record of an effect already made, or of
    /// a run's end, is worth waiting for rather than lost (the run would be
    /// resumed and the effect made twice).
    async fn patiently<T, F, Fut>(&self, mut write: F) -> Result<T, JournalError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, JournalError>>,
    {
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(100);
        let mut waited = false;
        loop {
            let error = match write().await {
                Ok(written) => return Ok(written),
                Err(error) => error,
            };
            if started.elapsed() > WRITE_PATIENCE {
                return Err(error);
            }
            if self.reachable().await {
                if waited {
                    return Err(error);
                }
                waited = true;
                continue;
            }
            if !waited {
                tracing::warn!(server = %self.server, error = %error, "postgres unreachable: the write waits for it");
            }
            waited = true;
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// Whether the server answers a query now.
    async fn reachable(&self) -> bool {
        let probe = async {
            let client = self.pool.get().await.ok()?;
            client.simple_query("SELECT 1").await.ok()
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), probe).await,
            Ok(Some(_))
        )
    }
}

/// How long a write waits for an unreachable server.
const WRITE_PATIENCE: Duration = Duration::from_secs(30);

/// The PostgreSQL journal. Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct PostgresJournal {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    /// Event intake's group commit (see [`start_intake`]).
    intake: mpsc::Sender<Accepting>,
    options: PostgresOptions,
    /// The claim under which this node holds each unfinished run it writes.
    claims: Mutex<HashMap<String, i64>>,
    /// Each run's last write, so that the next write of the run waits for it.
    in_order: Arc<WriteOrder>,
    // Last: the runtime stops after everything that uses it.
    bridge: Bridge,
}

impl std::fmt::Debug for PostgresJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresJournal")
            .field("server", &self.inner.db.server)
            .field("node", &self.inner.db.node)
            .finish_non_exhaustive()
    }
}

impl PostgresJournal {
    /// Connects, migrates the schema, and keeps a pool of connections.
    pub async fn open(
        target: &DatabaseTarget,
        options: PostgresOptions,
    ) -> Result<PostgresJournal, PostgresOpenError> {
        let server = target.shown().to_string();
        let connect_error = |detail: String| PostgresOpenError::Connect {
            server: server.clone(),
            detail,
        };
        let seal = match &options.seal_dir {
            Some(dir) => {
                crate::private_fs::create_dir_all(dir).map_err(|source| SealKeyError::Write {
                    path: dir.clone(),
                    source,
                })?;
                SealKey::load_or_create(dir)?
            }
            None => SealKey::ephemeral()?,
        };
        let bridge = Bridge::new().map_err(PostgresOpenError::Thread)?;
        let pool = target.pool(options.pool_size).map_err(connect_error)?;
        let db = Db {
            pool,
            node: options.node.as_str().into(),
            dedupe_window: duration_nanos(options.limits.dedupe_window),
            node_timeout: options.node_timeout,
            server: server.as_str().into(),
            seal: Arc::new(seal),
            max_state_keys: options.limits.max_state_keys,
        };
        let (migrating, named) = (db.clone(), server.clone());
        bridge
            .spawn(async move {
                let mut client =
                    migrating
                        .pool
                        .get()
                        .await
                        .map_err(|e| PostgresOpenError::Connect {
                            server: named.clone(),
                            detail: explain(&e),
                        })?;
                schema::migrate(&mut client)
                    .await
                    .map_err(|source| PostgresOpenError::Migrate {
                        server: named,
                        source,
                    })
            })
            .await
            .map_err(|e| connect_error(e.to_string()))??;
        let intake = start_intake(&bridge, db.clone());
        let journal = PostgresJournal {
            inner: Arc::new(Inner {
                intake,
                db,
                options,
                claims: Mutex::default(),
                in_order: Arc::default(),
                bridge,
            }),
        };
        journal.check_size().await;
        Ok(journal)
    }

    /// The bytes the journal's tables hold (with their indexes and TOAST).
    pub async fn store_size(&self) -> Result<u64, JournalError> {
        let db = self.db();
        self.inner
            .bridge
            .run(async move { reads::store_size(&db).await })
            .await
    }

    /// Reports the journal's size (`zoomwire_store_bytes`) and warns past
    /// `warn_size_bytes`, as the SQLite store does after each pruning pass.
    async fn check_size(&self) {
        let bytes = match self.store_size().await {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(error = %error, "cannot measure the postgres journal's size");
                return;
            }
        };
        metrics::gauge!("zoomwire_store_bytes").set(bytes as f64);
        if let Some(limit) = self.inner.options.limits.warn_size_bytes
            && bytes > limit
        {
            tracing::warn!(
                server = %self.inner.db.server, bytes, warn_size = limit,
                "the store is larger than journal.warn_size: shorten journal.retention, give rule state a ttl, or raise the limit"
            );
        }
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.inner.db.node
    }

    /// The server, as `host:port/database`.
    pub fn server(&self) -> &str {
        &self.inner.db.server
    }

    /// Run history, newest first (`zoomwire runs`).
    pub fn list_runs(&self, filter: RunFilter) -> Result<Vec<RunSummary>, JournalError> {
        let statuses = match (filter.failed_only, filter.skipped_only) {
            (true, _) => vec![RunStatus::Failed, RunStatus::Dead],
            (false, true) => vec![RunStatus::Skipped],
            (false, false) => Vec::new(),
        };
        let query = RunQuery {
            rule: filter.rule,
            statuses,
            before: None,
            limit: filter.limit,
        };
        Ok(self.runs_page(&query)?.runs)
    }

    /// One page of run history, newest first. Blocks until answered.
    pub fn runs_page(&self, query: &RunQuery) -> Result<RunPage, JournalError> {
        let (db, query) = (self.db(), query.clone());
        self.inner
            .bridge
            .block(async move { reads::runs_page(&db, &query).await })
    }

    /// One run with a page of its effects and log lines. Blocks.
    pub fn run_trace(
        &self,
        id: &str,
        query: &TraceQuery,
    ) -> Result<Option<RunTrace>, JournalError> {
        let (db, id, query) = (self.db(), id.to_string(), *query);
        self.inner
            .bridge
            .block(async move { reads::run_trace(&db, &id, &query).await })
    }

    /// A rule's latest runs, and its runs since `since` by status. Blocks.
    pub fn rule_activity(
        &self,
        rule: &str,
        since: chrono::DateTime<Utc>,
        recent: usize,
    ) -> Result<RuleActivity, JournalError> {
        let (db, rule) = (self.db(), rule.to_string());
        self.inner
            .bridge
            .block(async move { reads::rule_activity(&db, &rule, since, recent).await })
    }

    /// One run with all its effects, logs and trigger. Blocks.
    pub fn get_run(&self, id: &str) -> Result<Option<RunDetail>, JournalError> {
        let (db, id) = (self.db(), id.to_string());
        self.inner
            .bridge
            .block(async move { reads::get_run(&db, &id).await })
    }

    /// A stored event, rebuilt as intake built it. Blocks.
    pub fn get_event(&self, id: &str) -> Result<Option<Event>, JournalError> {
        let (db, id) = (self.db(), id.to_string());
        let stored = self.inner.bridge.block(async move {
            let client = db.client().await?;
            reads::stored_event(&db, &client, &id).await
        })?;
        stored
            .map(|stored| stored.into_event(&self.inner.db.seal))
            .transpose()
    }

    /// Puts a failed or dead run back to pending, for any node to take.
    pub async fn requeue_run(&self, id: &str) -> Result<RequeueOutcome, JournalError> {
        let (db, id) = (self.db(), id.to_string());
        self.inner
            .bridge
            .run(async move { writes::requeue(&db, &id, now()).await })
            .await
    }

    /// Whether an event with this id would be dropped as a duplicate now.
    pub async fn is_duplicate(&self, id: &str) -> Result<bool, JournalError> {
        let (db, id) = (self.db(), id.to_string());
        self.inner
            .bridge
            .run(async move { reads::is_duplicate(&db, &id, now()).await })
            .await
    }

    /// Rows held per table.
    pub async fn counts(&self) -> Result<StoreCounts, JournalError> {
        let db = self.db();
        self.inner
            .bridge
            .run(async move { reads::counts(&db).await })
            .await
    }

    /// One pruning pass now, with the configured retention and budgets.
    pub async fn prune(&self) -> Result<PruneReport, JournalError> {
        let db = self.db();
        let limits = &self.inner.options.limits;
        let now = now();
        let cutoff = now.saturating_sub(duration_nanos(limits.max_age));
        let (max_runs, max_events) = (limits.max_runs, limits.max_events);
        let report = self
            .inner
            .bridge
            .run(async move { prune::prune(&db, now, cutoff, max_runs, max_events).await })
            .await;
        self.check_size().await;
        report
    }

    fn db(&self) -> Db {
        self.inner.db.clone()
    }

    /// The claim this node holds `run_id` under, if it wrote or took it.
    fn claim_of(&self, run_id: &str) -> Option<i64> {
        self.inner.claims.lock().get(run_id).copied()
    }

    fn set_claim(&self, run_id: &str, claim: i64) {
        self.inner.claims.lock().insert(run_id.to_string(), claim);
    }

    fn forget_claim(&self, run_id: &str) {
        self.inner.claims.lock().remove(run_id);
    }
}

/// An event waiting to be accepted, and where its answer goes.
type Accepting = (
    writes::Acceptance,
    oneshot::Sender<Result<bool, JournalError>>,
);

/// Most events accepted in one transaction.
const MAX_BATCH: usize = 512;
/// Batches being written at once.
const INTAKE_WRITERS: usize = 4;
/// Events waiting for a batch before callers wait to queue (back-pressure).
const INTAKE_QUEUE: usize = 4096;

/// Event intake's group commit: events are accepted in batches, one
/// transaction (and one sync on the server) for everything that queued up
/// while the previous batches were being written, so that many events
/// share a commit as in the SQLite journal.
fn start_intake(bridge: &Bridge, db: Db) -> mpsc::Sender<Accepting> {
    let (sender, mut receiver) = mpsc::channel::<Accepting>(INTAKE_QUEUE);
    bridge.spawn(async move {
        let writers = Arc::new(Semaphore::new(INTAKE_WRITERS));
        loop {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            if receiver.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return;
            }
            // Never closed: acquiring only waits.
            let Ok(writer) = writers.clone().acquire_owned().await else {
                return;
            };
            let db = db.clone();
            tokio::spawn(async move {
                let (acceptances, answers): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                match writes::accept(&db, &acceptances, now()).await {
                    Ok(fresh) => {
                        for (answer, fresh) in answers.into_iter().zip(fresh) {
                            let _ = answer.send(Ok(fresh));
                        }
                    }
                    Err(error) => {
                        for answer in answers {
                            let _ = answer.send(Err(JournalError(error.0.clone())));
                        }
                    }
                }
                drop(writer);
            });
        }
    });
    sender
}

/// Each run's last write, so that writes of one run land in the order they
/// were made even when the caller does not wait for them (`queue_run`, an
/// effect's record saved while the script goes on).
#[derive(Default)]
struct WriteOrder {
    last: Mutex<HashMap<String, (u64, oneshot::Receiver<()>)>>,
    next: AtomicU64,
}

impl PostgresJournal {
    /// Starts `write` of run `run_id` after the run's previous write ends.
    fn write_in_order<F>(
        &self,
        run_id: &str,
        write: F,
    ) -> tokio::task::JoinHandle<Result<(), JournalError>>
    where
        F: std::future::Future<Output = Result<(), JournalError>> + Send + 'static,
    {
        let order = self.inner.in_order.clone();
        let token = order.next.fetch_add(1, Ordering::Relaxed);
        let (done, finished) = oneshot::channel();
        let previous = order
            .last
            .lock()
            .insert(run_id.to_string(), (token, finished))
            .map(|(_, previous)| previous);
        let run_id = run_id.to_string();
        self.inner.bridge.spawn(async move {
            if let Some(previous) = previous {
                // An error only says the previous write's task ended.
                let _ = previous.await;
            }
            let result = write.await;
            let _ = done.send(());
            let mut last = order.last.lock();
            if last.get(&run_id).is_some_and(|(t, _)| *t == token) {
                last.remove(&run_id);
            }
            result
        })
    }
}

/// An error with its causes (the pool's and the client's messages leave
/// out why a connection failed: a refused certificate, a refused login).
fn explain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

fn now() -> i64 {
    to_nanos(Utc::now())
}
