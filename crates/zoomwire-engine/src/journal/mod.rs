//! The journal: an embedded SQLite store under the data directory that makes
//! the reliability promises hold. It keeps accepted events (deduplicated),
//! runs with their effects and logs, and rule state.
//!
//! The file is `<data_dir>/zoomwire.db`, in WAL mode with `synchronous=FULL`
//! by default: every answer that says "written" comes after the commit
//! holding the change has been synced (`ZOOMWIRE_JOURNAL_SYNC=normal`,
//! [`JournalSync::Normal`], trades the last commits before a power loss for
//! speed; a process crash still loses nothing). All writes go through one writer thread that commits
//! requests in batches (see `writer.rs`), so many concurrent events share one
//! sync (`fdatasync`: SQLite is built with `HAVE_FDATASYNC`, see
//! `.cargo/config.toml`; the writer's connection writes each log frame in
//! one write, `vfs.rs`); reads use a small pool of their own connections. A store that is
//! damaged, unreadable, foreign or from a newer zoomwire is refused at open
//! with an error naming the file, and never rewritten. A full disk fails the
//! write with a [`JournalError`] and nothing counts as accepted. Old rows are
//! pruned in the background (see `prune.rs`).
//!
//! The data directory is its owner's only (0700), and so are the store, its
//! `-wal` and `-shm` files (0600: SQLite gives those the store's mode) and
//! the seal key (`seal.rs`), which seals what the store keeps but never
//! shows: effects' unredacted results, for replay, and download tokens.

mod checkpoint;
mod codec;
mod engine_traits;
mod event_index;
pub mod history;
mod key_filter;
pub mod memory;
mod ops;
mod pages;
pub mod postgres;
mod prune;
mod query;
mod schema;
pub mod seal;
mod statements;
mod upgrade;
mod vfs;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::engine::journal::{JournalError, RunStatus};
use crate::event::Event;
use codec::{duration_nanos, to_nanos};
use history::{RuleActivity, RunPage, RunQuery, RunTrace, TraceQuery};
use ops::{Op, Outcome};
use prune::{CHUNK, PruneStep};
use query::Readers;
use seal::{SealKey, SealKeyError};
use writer::{WriterHandle, WriterSettings};

pub use query::{EventSummary, RunDetail, RunFilter, RunSummary, StoreCounts};
pub use schema::SCHEMA_VERSION;

/// The store's file name inside the data directory.
pub const DB_FILE: &str = "zoomwire.db";

/// The store size past which the daemon warns: 1 GiB.
pub const DEFAULT_WARN_SIZE_BYTES: u64 = 1 << 30;

/// How long events nobody waits for may wait for a commit to share
/// ([`JournalOptions::may_wait`]): at a steady rate an event that starts a
/// run comes along well within it, and a crash loses at most this much of
/// the others.
pub const DEFAULT_MAY_WAIT: Duration = Duration::from_millis(20);

/// Where runs are remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalMode {
    /// SQLite under the data folder: durable, resumes after a crash.
    Sqlite,
    /// PostgreSQL, shared by several nodes (`ZOOMWIRE_DATABASE_URL`).
    Postgres,
    /// In memory: nothing survives the process (benchmarks, demos).
    Memory,
}

/// How the journal behaves; [`Default`] suits the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalOptions {
    /// An event whose id was accepted less than this long before is a duplicate.
    pub dedupe_window: Duration,
    /// Finished runs and events older than this are pruned.
    pub max_age: Duration,
    /// Row budget for runs: beyond it the oldest finished runs are pruned.
    pub max_runs: u64,
    /// Row budget for events: beyond it the oldest events no unfinished run needs are pruned.
    pub max_events: u64,
    /// How often to prune in the background; `None` never does.
    pub prune_interval: Option<Duration>,
    /// Most requests committed in one transaction.
    pub max_batch: usize,
    /// Async requests waiting for the writer before callers wait to queue (back-pressure).
    pub queue_capacity: usize,
    /// Run `PRAGMA quick_check` at open (reads the whole file once).
    pub verify_on_open: bool,
    /// Cap on the file's size: writes beyond it fail as on a full disk.
    pub max_size_bytes: Option<u64>,
    /// Past this size (the store and its log together) each pruning pass
    /// logs a warning; `None` never does.
    pub warn_size_bytes: Option<u64>,
    /// Live state keys one rule may hold; a new one past it is refused.
    pub max_state_keys: usize,
    /// How long to wait for another process holding the store's lock.
    pub busy_timeout: Duration,
    /// When commits reach the disk.
    pub sync: JournalSync,
    /// Longest the commit of events nobody waits for (they start no run,
    /// and their source wants no answer, as the WebSocket's) waits for the
    /// next commit somebody waits for, to share its sync. Until committed
    /// they are not accepted, so a crash in that time loses them. Zero
    /// commits them at once, each batch with a sync of its own.
    pub may_wait: Duration,
}

/// When SQLite syncs the write-ahead log (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum JournalSync {
    /// Every commit is on disk before it counts: nothing accepted is lost
    /// even to a power cut or an OS crash. Each commit costs a sync.
    #[default]
    Full,
    /// Commits reach the OS at once and the disk at checkpoints: a process
    /// crash (`kill -9` included) loses nothing, and the store is never
    /// corrupted, but a power cut or OS crash can roll back the last
    /// commits. No sync on the way of each event, so much faster.
    Normal,
}

impl JournalSync {
    /// The `PRAGMA synchronous` value.
    pub fn pragma(self) -> &'static str {
        match self {
            JournalSync::Full => "FULL",
            JournalSync::Normal => "NORMAL",
        }
    }
}

impl Default for JournalOptions {
    fn default() -> JournalOptions {
        JournalOptions {
            dedupe_window: Duration::from_secs(72 * 3600),
            max_age: Duration::from_secs(30 * 24 * 3600),
            max_runs: 1_000_000,
            max_events: 250_000,
            prune_interval: Some(Duration::from_secs(600)),
            max_batch: 1024,
            queue_capacity: 8192,
            verify_on_open: true,
            max_size_bytes: None,
            warn_size_bytes: Some(DEFAULT_WARN_SIZE_BYTES),
            max_state_keys: crate::effects::state::DEFAULT_MAX_KEYS,
            busy_timeout: Duration::from_secs(5),
            sync: JournalSync::Full,
            may_wait: DEFAULT_MAY_WAIT,
        }
    }
}

impl JournalOptions {
    /// For short-lived commands (`zoomwire runs`) beside a running daemon:
    /// no background pruning and no full read of the file at open.
    pub fn for_command() -> JournalOptions {
        JournalOptions {
            prune_interval: None,
            verify_on_open: false,
            ..JournalOptions::default()
        }
    }
}

/// Why the store could not be opened. Each names the file or directory.
#[derive(Debug, thiserror::Error)]
pub enum JournalOpenError {
    #[error("cannot create the data directory {}: {source}", path.display())]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the store {}: {detail}", path.display())]
    Open { path: PathBuf, detail: String },
    #[error(
        "the store {} is corrupt or unreadable ({detail}); it was left untouched: move it aside \
         to start with an empty store, or restore it from a backup",
        path.display()
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "the store {} was written by a newer zoomwire (schema version {found}, this build knows \
         up to {supported}): upgrade zoomwire",
        path.display()
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("the store {} is locked by another process", path.display())]
    Locked { path: PathBuf },
    #[error("cannot start the journal's threads: {0}")]
    Thread(#[source] std::io::Error),
    #[error(transparent)]
    SealKey(#[from] SealKeyError),
}

/// What `requeue_run` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome", content = "status")]
pub enum RequeueOutcome {
    /// Back to pending as attempt 1, its effects kept for replay.
    Requeued,
    NotFound,
    /// The run is not over (pending, running, or failed and waiting to retry).
    NotFinished,
    /// Only failed and dead runs are retried; this one is in another state.
    NotFailed(RunStatus),
    /// The run's event has been pruned, so it cannot run again.
    EventPruned,
}

/// Rows removed by one pruning pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    pub runs: u64,
    pub events: u64,
    pub dedupe: u64,
    pub state: u64,
}

/// How the writer has batched so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalStats {
    /// Transactions committed (or attempted).
    pub batches: u64,
    /// Requests they carried.
    pub jobs: u64,
    pub largest_batch: u64,
}

/// The SQLite journal. Cheap to clone: clones share the store and its writer.
#[derive(Clone)]
pub struct SqliteJournal {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    options: JournalOptions,
    readers: Readers,
    /// The keys of events not yet in `event_index` (`event_index.rs`).
    events: Arc<event_index::EventIndex>,
    /// Seals unredacted effect results and download tokens.
    seal: Arc<SealKey>,
    // Field order matters: the checkpoint thread stops first, then the
    // writer's sender drops, then its thread is joined (its connection, the
    // last, checkpoints what is left and removes the log).
    _checkpoints: checkpoint::Checkpointer,
    writer: WriterHandle,
    _writer_thread: JoinOnDrop,
    _stop_pruner: Option<Sender<()>>,
}

/// Waits for the writer to finish its queue when the journal is dropped.
struct JoinOnDrop(Option<JoinHandle<()>>);

impl Drop for JoinOnDrop {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for SqliteJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteJournal")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl SqliteJournal {
    /// Opens `<data_dir>/zoomwire.db`, creating the directory and the store
    /// when absent, migrating its schema, and starting the writer (and the
    /// pruner, if configured).
    pub fn open(
        data_dir: &Path,
        options: JournalOptions,
    ) -> Result<SqliteJournal, JournalOpenError> {
        crate::private_fs::create_dir_all(data_dir).map_err(|source| {
            JournalOpenError::DataDir {
                path: data_dir.to_path_buf(),
                source,
            }
        })?;
        crate::private_fs::restrict_dir(data_dir);
        let path = data_dir.join(DB_FILE);
        create_private_store(&path).map_err(|source| JournalOpenError::DataDir {
            path: path.clone(),
            source,
        })?;
        let seal = Arc::new(SealKey::load_or_create(data_dir)?);
        let version_before = upgrade::version_before_open(&path);
        let mut conn = schema::open_writer(
            &path,
            options.busy_timeout,
            options.verify_on_open,
            options.max_size_bytes,
            options.sync,
        )?;
        restrict_store_files(&path);
        if upgrade::needs_token_sealing(version_before) {
            let sealed = upgrade::seal_stored_tokens(&mut conn, &seal)
                .map_err(|e| schema::open_error(&path, e))?;
            tracing::info!(
                events = sealed,
                "download tokens taken out of the stored event bodies"
            );
        }
        let events = Arc::new(
            event_index::EventIndex::load(&conn).map_err(|e| schema::open_error(&path, e))?,
        );
        let log_restart = checkpoint::LogRestart::default();
        let settings = WriterSettings {
            path: path.clone(),
            seal: seal.clone(),
            dedupe_window_nanos: duration_nanos(options.dedupe_window),
            max_batch: options.max_batch.max(1),
            queue_capacity: options.queue_capacity,
            log_restart: log_restart.clone(),
            events: events.clone(),
            may_wait: options.may_wait,
        };
        let (writer, thread) = writer::spawn(conn, settings).map_err(JournalOpenError::Thread)?;
        let checkpoints = checkpoint::spawn(
            path.clone(),
            options.busy_timeout,
            options.sync,
            log_restart,
        )
        .map_err(JournalOpenError::Thread)?;
        let (stop_pruner, stop_receiver) = std::sync::mpsc::channel();
        let interval = options.prune_interval;
        let inner = Arc::new(Inner {
            readers: Readers::new(&path, options.busy_timeout),
            events,
            seal,
            path,
            options,
            _checkpoints: checkpoints,
            writer,
            _writer_thread: JoinOnDrop(Some(thread)),
            _stop_pruner: interval.map(|_| stop_pruner),
        });
        inner.check_size();
        if let Some(interval) = interval {
            let weak = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name("zoomwire-prune".into())
                .spawn(move || prune_loop(weak, stop_receiver, interval))
                .map_err(JournalOpenError::Thread)?;
        }
        Ok(SqliteJournal { inner })
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.inner.path
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

    /// One page of run history, newest first (`/api/runs`, the page).
    pub fn runs_page(&self, query: &RunQuery) -> Result<RunPage, JournalError> {
        self.inner
            .readers
            .with(|conn| pages::runs_page(conn, query))
    }

    /// One run with a page of its effects and log lines (`/api/runs/{id}`).
    pub fn run_trace(
        &self,
        id: &str,
        query: &TraceQuery,
    ) -> Result<Option<RunTrace>, JournalError> {
        let events = &self.inner.events;
        self.inner
            .readers
            .with(|conn| pages::run_trace(conn, events, id, query))
    }

    /// A rule's latest runs, and its runs since `since` by status.
    pub fn rule_activity(
        &self,
        rule: &str,
        since: chrono::DateTime<Utc>,
        recent: usize,
    ) -> Result<RuleActivity, JournalError> {
        self.inner
            .readers
            .with(|conn| pages::rule_activity(conn, rule, since, recent))
    }

    /// One run with all its effects, logs and trigger.
    pub fn get_run(&self, id: &str) -> Result<Option<RunDetail>, JournalError> {
        let events = &self.inner.events;
        self.inner
            .readers
            .with(|conn| query::get_run(conn, events, id))
    }

    /// Puts a failed or dead run back to pending (`zoomwire runs retry ID`).
    /// A running daemon finds it among the unfinished runs its executor does
    /// not hold (it polls every second); a stopped one resumes it on start.
    pub async fn requeue_run(&self, id: &str) -> Result<RequeueOutcome, JournalError> {
        match self
            .inner
            .writer
            .submit(Op::Requeue { id: id.into() })
            .await?
        {
            Outcome::Requeued(outcome) => Ok(outcome),
            other => Err(unexpected(&other)),
        }
    }

    /// A stored event, rebuilt as intake built it.
    pub fn get_event(&self, id: &str) -> Result<Option<Event>, JournalError> {
        let stored = self
            .inner
            .readers
            .with(|conn| Ok(query::stored_event(conn, &self.inner.events, id)?))?;
        stored
            .map(|stored| stored.into_event(&self.inner.seal))
            .transpose()
    }

    /// Whether an event with this id would be dropped as a duplicate now
    /// (its id is within the dedupe window). Reconciliation asks before
    /// spending REST calls on something already seen.
    pub fn is_duplicate(&self, id: &str) -> Result<bool, JournalError> {
        let now = codec::to_nanos(chrono::Utc::now());
        let window = duration_nanos(self.inner.options.dedupe_window);
        self.inner.readers.with(|conn| {
            // The event's row while it is stored, its `dedupe` entry once pruned.
            let rowid = event_index::find_event(conn, &self.inner.events, id)?;
            let expires_at: Option<i64> = conn
                .prepare_cached(
                    "SELECT max(expires_at) FROM (
                         SELECT received_at + ?2 AS expires_at FROM events WHERE rowid = ?3
                         UNION ALL SELECT expires_at FROM dedupe WHERE id = ?1)",
                )?
                .query_row(rusqlite::params![id, window, rowid], |row| row.get(0))?;
            Ok(expires_at.is_some_and(|expires_at| expires_at > now))
        })
    }

    /// Rows held per table.
    pub fn counts(&self) -> Result<StoreCounts, JournalError> {
        self.inner.readers.with(query::counts)
    }

    /// How the writer has batched so far.
    pub fn stats(&self) -> JournalStats {
        use std::sync::atomic::Ordering::Relaxed;
        let counters = &self.inner.writer.counters;
        JournalStats {
            batches: counters.batches.load(Relaxed),
            jobs: counters.jobs.load(Relaxed),
            largest_batch: counters.largest_batch.load(Relaxed),
        }
    }

    /// One pruning pass now. Blocks the calling thread (use `spawn_blocking`
    /// from async code); the background pruner calls this.
    pub fn prune(&self) -> Result<PruneReport, JournalError> {
        self.inner.prune()
    }
}

impl Inner {
    /// Reports the store's size (`zoomwire_store_bytes`) and warns past
    /// `warn_size_bytes`.
    fn check_size(&self) {
        let bytes = store_size(&self.path);
        metrics::gauge!("zoomwire_store_bytes").set(bytes as f64);
        if let Some(limit) = self.options.warn_size_bytes
            && bytes > limit
        {
            tracing::warn!(
                path = %self.path.display(), bytes, warn_size = limit,
                "the store is larger than journal.warn_size: shorten journal.retention, give rule state a ttl, or raise the limit"
            );
        }
    }

    fn prune(&self) -> Result<PruneReport, JournalError> {
        let cutoff = to_nanos(Utc::now()).saturating_sub(duration_nanos(self.options.max_age));
        let report = PruneReport {
            dedupe: self.prune_step(PruneStep::Dedupe)?,
            state: self.prune_step(PruneStep::State)?,
            runs: self.prune_step(PruneStep::RunsOlderThan(cutoff))?
                + self.prune_beyond("runs", self.options.max_runs, PruneStep::OldestRuns)?,
            events: self.prune_step(PruneStep::EventsOlderThan(cutoff))?
                + self.prune_beyond("events", self.options.max_events, PruneStep::OldestEvents)?,
        };
        for (table, count) in [
            ("runs", report.runs),
            ("events", report.events),
            ("dedupe", report.dedupe),
            ("state", report.state),
        ] {
            metrics::counter!("zoomwire_journal_pruned_total", "table" => table).increment(count);
        }
        Ok(report)
    }

    /// Repeats one step, a chunk per transaction, until it deletes less than a chunk.
    fn prune_step(&self, step: PruneStep) -> Result<u64, JournalError> {
        let mut total = 0;
        loop {
            let deleted = self.prune_once(step)?;
            total += deleted;
            if deleted < CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    /// Deletes the oldest rows of `table` beyond `budget`, a chunk per
    /// transaction. The rows are counted once, on a read connection: a count
    /// reads the whole table (~57 ms for 300,000 events), and counted in the
    /// writer's transaction before each chunk it held up every commit that
    /// long, a hundred times to prune 50,000 events.
    fn prune_beyond(
        &self,
        table: &str,
        budget: u64,
        oldest: fn(u64) -> PruneStep,
    ) -> Result<u64, JournalError> {
        let held = self.readers.with(|conn| query::count_rows(conn, table))?;
        let mut excess = held.saturating_sub(budget);
        let mut total = 0;
        while excess > 0 {
            let asked = excess.min(CHUNK as u64);
            let deleted = self.prune_once(oldest(asked))?;
            total += deleted;
            excess -= deleted.min(excess);
            if deleted < asked {
                break;
            }
        }
        Ok(total)
    }

    /// One pruning step in one writer transaction; how many rows it deleted.
    fn prune_once(&self, step: PruneStep) -> Result<u64, JournalError> {
        match self.writer.submit_blocking(Op::Prune(step))? {
            Outcome::Pruned(deleted) => Ok(deleted),
            other => Err(unexpected(&other)),
        }
    }
}

fn prune_loop(inner: Weak<Inner>, stop: std::sync::mpsc::Receiver<()>, interval: Duration) {
    loop {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match inner.prune() {
            Ok(report) if report != PruneReport::default() => {
                tracing::info!(?report, "journal pruned");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(error = %error, "journal pruning failed"),
        }
        inner.check_size();
        drop(inner);
        if !matches!(stop.recv_timeout(interval), Err(RecvTimeoutError::Timeout)) {
            return;
        }
    }
}

pub(crate) fn unexpected(outcome: &Outcome) -> JournalError {
    JournalError(format!(
        "the journal writer answered unexpectedly: {outcome:?}"
    ))
}

/// The bytes of the store and its write-ahead log.
fn store_size(path: &Path) -> u64 {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    [path, Path::new(&wal)]
        .iter()
        .filter_map(|file| std::fs::metadata(file).ok())
        .map(|meta| meta.len())
        .sum()
}

/// Creates the store's file 0600 before SQLite opens it, so that the `-wal`
/// and `-shm` files SQLite makes beside it take the same mode.
fn create_private_store(path: &Path) -> std::io::Result<()> {
    match crate::private_fs::file_options()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error),
    }
}

/// The store holds event bodies, participants' details and rule state:
/// it, its log and its shared memory are narrowed to their owner (a store
/// from an older zoomwire was made wider).
fn restrict_store_files(path: &Path) {
    crate::private_fs::restrict_file(path);
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        crate::private_fs::restrict_file(Path::new(&name));
    }
}
