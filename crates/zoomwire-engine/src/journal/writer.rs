//! The one writer: a thread that owns the store's write connection and
//! commits requests in batches (group commit).
//!
//! Callers hand it a [`Job`] and wait for the answer, which comes only after
//! the transaction holding their change has committed (and, with
//! `synchronous=FULL`, reached the disk). While one batch commits, the next
//! requests queue up and are taken together, so many concurrent callers share
//! one sync. Async callers (event intake, run records) wait on a oneshot
//! channel; sandbox threads (effect records, state) block on a std channel,
//! which is safe anywhere; a caller that does not wait at all (intake's
//! events that start no run, [`WriterHandle::submit_all_detached`]) gets
//! its answers in a call made on this thread. If a batch fails, every job
//! in it is retried alone so that one bad request cannot fail the others.
//!
//! An event's acceptance can also be answered early
//! ([`WriterHandle::submit_all_early`]): once its statements ran in the open
//! transaction ("executed": new or a duplicate is known then), just before
//! the commit, and again once committed. Its runs may start in between; what
//! they write comes after it, in a later batch. If the event's commit then
//! fails, the writer voids its runs: it refuses every later write for them,
//! so nothing of a run whose event was never written is stored.
//!
//! A batch nobody waits for ([`Haste::MayWait`]: intake's events that start
//! no run and whose source wants no answer, the WebSocket's) waits up to
//! [`WriterSettings::may_wait`] for a job someone waits for, and commits
//! with it: at a steady rate most events start no run, and each took a
//! commit and a sync of its own. Until committed such an event is not
//! accepted: a crash in that time loses it, as one a moment earlier
//! would have. Anything else in the queue is committed at once, as before.
//!
//! Measured and not kept: a commit window (PostgreSQL's `commit_delay`, made
//! adaptive) that kept a batch open after its early answers, at most 0.5 ms,
//! until every run it started had queued its first effect's start mark or
//! its end, so that a run that posts waits for one sync instead of two in
//! series. It saves only what the event's sync takes beyond the run's way
//! from the early answer to its mark (~0.16 ms at the median: the runtime's
//! wake-up, the script thread's, the script up to its first effect) and the
//! sync is ~0.25 ms here: the effect's commit came ~50 µs sooner at the
//! median, and in `zoomwire bench` (6 alternated latency phases, 7 burst
//! pairs) the p50, the p99 and the CPU per event moved both ways within the
//! machine's noise. The code (with its tests) is on branch `wt/window37`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TryRecvError, channel, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::Utc;
use rusqlite::{Connection, ErrorCode, TransactionBehavior};
use tokio::sync::{Semaphore, oneshot};

use super::checkpoint::LogRestart;
use super::codec::to_nanos;
use super::event_index::{EventIndex, IndexWriter};
use super::ops::{Apply, Op, Outcome, apply};
use super::seal::SealKey;
use crate::effects::gateway::{EventCommit, EventCommitted};
use crate::engine::journal::JournalError;

/// Settings the writer thread needs.
pub(crate) struct WriterSettings {
    pub path: PathBuf,
    /// Seals unredacted results and download tokens.
    pub seal: Arc<SealKey>,
    pub dedupe_window_nanos: i64,
    pub max_batch: usize,
    /// Async requests allowed in flight before callers wait (back-pressure).
    pub queue_capacity: usize,
    /// Rewinds the log, when idle, if the checkpoint thread asks.
    pub log_restart: LogRestart,
    /// The keys of events not yet in `event_index`, shared with the readers.
    pub events: Arc<EventIndex>,
    /// Longest a batch of [`Haste::MayWait`] jobs waits for company; zero
    /// commits it at once.
    pub may_wait: Duration,
}

/// Most [`Haste::MayWait`] jobs that wait together: past this many they
/// commit without company (a burst fills a batch soon enough). Below what
/// intake keeps in flight, so that intake is never held up waiting for them.
const MOST_WAITING: usize = 64;

/// Whether a job's commit may wait for another job's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Haste {
    /// Committed as soon as the writer gets to it.
    Now,
    /// Nobody waits for it: it may wait (at most [`WriterSettings::may_wait`])
    /// to share the commit of a job somebody waits for.
    MayWait,
}

/// Where the answer to a job goes.
enum Reply {
    Async(oneshot::Sender<Result<Outcome, JournalError>>),
    Blocking(SyncSender<Result<Outcome, JournalError>>),
    /// One part of a [`WriterHandle::submit_all`]: answered with the others.
    Part(Arc<Gather>, usize),
    /// A [`Reply::Part`] that first resolves its event's commit, on this
    /// thread, for the runs waiting on it ([`WriterHandle::submit_all_early`]).
    Resolving(Arc<Gather>, usize, EventCommitted),
    /// Nobody waits (the writer logs a failure).
    Nobody,
}

/// Answer type of one job.
type Answer = Result<Outcome, JournalError>;

/// Collects the answers of the jobs of one [`WriterHandle::submit_all`] and
/// hands them over together, so its caller is woken once, not once per job.
/// Dropped unanswered (the writer stopped), it hands over what it has: a
/// missing answer is `None`.
struct Gather(parking_lot::Mutex<Gathered>);

/// What receives a [`Gather`]'s answers, on the thread that gives the last.
pub(crate) type Gathering = Box<dyn FnOnce(Vec<Option<Answer>>) + Send>;

struct Gathered {
    answers: Vec<Option<Answer>>,
    left: usize,
    done: Option<Gathering>,
}

impl Drop for Gathered {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done(std::mem::take(&mut self.answers));
        }
    }
}

impl Gather {
    fn new(count: usize, done: oneshot::Sender<Vec<Option<Answer>>>) -> Arc<Gather> {
        Gather::calling(
            count,
            Box::new(move |answers| {
                let _ = done.send(answers);
            }),
        )
    }

    fn calling(count: usize, done: Gathering) -> Arc<Gather> {
        Arc::new(Gather(parking_lot::Mutex::new(Gathered {
            answers: (0..count).map(|_| None).collect(),
            left: count,
            done: Some(done),
        })))
    }

    fn put(&self, index: usize, answer: Answer) {
        let mut gathered = self.0.lock();
        if let Some(slot) = gathered.answers.get_mut(index) {
            *slot = Some(answer);
            gathered.left -= 1;
        }
        if gathered.left == 0
            && let Some(done) = gathered.done.take()
        {
            let answers = std::mem::take(&mut gathered.answers);
            drop(gathered);
            done(answers);
        }
    }
}

impl Reply {
    fn send(self, result: Result<Outcome, JournalError>) {
        // The caller may have stopped waiting (a cancelled future): nothing to do then.
        match self {
            Reply::Async(sender) => {
                let _ = sender.send(result);
            }
            Reply::Blocking(sender) => {
                let _ = sender.send(result);
            }
            Reply::Part(gather, index) => gather.put(index, result),
            Reply::Resolving(gather, index, commit) => {
                commit.resolve(match &result {
                    Ok(Outcome::Accepted(true)) => Ok(()),
                    Ok(_) => Err("a duplicate after all".into()),
                    Err(error) => Err(error.0.clone()),
                });
                gather.put(index, result)
            }
            Reply::Nobody => {}
        }
    }
}

/// The commit of a job queued with [`WriterHandle::submit_deferred`], to wait for.
pub(crate) struct CommitWait {
    receiver: Receiver<Result<Outcome, JournalError>>,
    path: Arc<Path>,
}

impl CommitWait {
    /// Blocks the calling thread until the job is committed.
    pub fn wait(self) -> Result<Outcome, JournalError> {
        self.receiver
            .recv()
            .map_err(|_| stopped_error(&self.path))?
    }
}

/// One request to the writer.
struct Job {
    op: Op,
    reply: Reply,
    /// Answered as soon as the op ran, before its commit (an accept only).
    executed: Option<Reply>,
    haste: Haste,
}

impl Job {
    /// A job committed as soon as the writer gets to it.
    fn now(op: Op, reply: Reply, executed: Option<Reply>) -> Job {
        Job {
            op,
            reply,
            executed,
            haste: Haste::Now,
        }
    }
}

/// Answers of [`WriterHandle::submit_all_early`]: `executed` once every op
/// ran (before its commit), `committed` once each committed or failed.
pub(crate) struct EarlyAnswers {
    pub executed: Vec<Answer>,
    /// Per op, its commit, resolved by the writer as it answers.
    pub commits: Vec<EventCommit>,
    pub committed: oneshot::Receiver<Vec<Option<Answer>>>,
}

/// Counters of the writer's work, for tests, the admin API and benchmarks.
#[derive(Debug, Default)]
pub(crate) struct WriterCounters {
    pub batches: AtomicU64,
    pub jobs: AtomicU64,
    pub largest_batch: AtomicU64,
}

fn stopped_error(path: &Path) -> JournalError {
    JournalError(format!(
        "the writer of the store {} has stopped",
        path.display()
    ))
}

/// The sending side of the writer.
pub(crate) struct WriterHandle {
    sender: Sender<Job>,
    permits: Arc<Semaphore>,
    /// The permits `permits` started with.
    capacity: usize,
    path: Arc<Path>,
    pub counters: Arc<WriterCounters>,
}

impl WriterHandle {
    /// Queues `op` and waits for its commit without blocking the runtime.
    pub async fn submit(&self, op: Op) -> Result<Outcome, JournalError> {
        let _permit = self.permits.acquire().await.map_err(|_| self.stopped())?;
        let (sender, receiver) = oneshot::channel();
        self.send(Job::now(op, Reply::Async(sender), None))?;
        receiver.await.map_err(|_| self.stopped())?
    }

    /// Queues every op of `ops` (each committed all or nothing, as with
    /// [`WriterHandle::submit`]) and waits for all their commits, answered
    /// in order. One channel for all of them: the caller is woken once.
    pub async fn submit_all(&self, ops: Vec<Op>) -> Vec<Answer> {
        let count = ops.len();
        if count == 0 {
            return Vec::new();
        }
        let (done, answers) = oneshot::channel();
        let done = Box::new(move |answers| {
            let _ = done.send(answers);
        });
        self.submit_all_detached(ops, Haste::Now, done).await;
        // Always answered: a gather dropped unanswered hands over what it has.
        answers
            .await
            .unwrap_or_else(|_| (0..count).map(|_| Err(self.stopped())).collect())
    }

    /// [`WriterHandle::submit_all`] for a caller that does not wait: `done`
    /// gets the answers, in order, on the writer's thread once the last op
    /// committed or failed (or on this one, if the writer has stopped). It
    /// must not block. Waits only for room in the bounded queue. With
    /// [`Haste::MayWait`] the commit may wait for another job's.
    pub async fn submit_all_detached(
        &self,
        ops: Vec<Op>,
        haste: Haste,
        done: Box<dyn FnOnce(Vec<Answer>) + Send>,
    ) {
        let count = ops.len();
        let wanted = count.clamp(1, self.capacity) as u32;
        let permits = self.permits.clone().acquire_many_owned(wanted).await.ok();
        let path = self.path.clone();
        let gather = Gather::calling(
            count,
            Box::new(move |answers| {
                drop(permits);
                done(in_order(count, answers, &path));
            }),
        );
        for (index, op) in ops.into_iter().enumerate() {
            let job = Job {
                haste,
                ..Job::now(op, Reply::Part(gather.clone(), index), None)
            };
            if self.send(job).is_err() {
                break;
            }
        }
    }

    /// [`WriterHandle::submit_all`] answered twice: once every op ran in
    /// its transaction (waited for here), and once each committed (the
    /// receiver returned). An executed answer can still end in a failed
    /// commit; the committed one is final.
    pub async fn submit_all_early(&self, ops: Vec<Op>) -> EarlyAnswers {
        let count = ops.len();
        let (all_committed, committed) = oneshot::channel();
        let (resolvers, commits): (Vec<_>, Vec<_>) =
            (0..count).map(|_| EventCommit::pending()).unzip();
        let wanted = count.clamp(1, self.capacity) as u32;
        let Ok(_permits) = self.permits.acquire_many(wanted).await else {
            return EarlyAnswers {
                executed: (0..count).map(|_| Err(self.stopped())).collect(),
                commits,
                committed,
            };
        };
        let (all_executed, executed) = oneshot::channel();
        let answers = Gather::new(count, all_committed);
        let executions = Gather::new(count, all_executed);
        for (index, (op, resolver)) in ops.into_iter().zip(resolvers).enumerate() {
            let job = Job::now(
                op,
                Reply::Resolving(answers.clone(), index, resolver),
                Some(Reply::Part(executions.clone(), index)),
            );
            if self.send(job).is_err() {
                break;
            }
        }
        drop((answers, executions));
        let executed = self.answers(count, executed.await.unwrap_or_default());
        EarlyAnswers {
            executed,
            commits,
            committed,
        }
    }

    /// Gathered answers in order, a missing one as the writer stopped.
    pub fn answers(&self, count: usize, answers: Vec<Option<Answer>>) -> Vec<Answer> {
        in_order(count, answers, &self.path)
    }

    /// Queues `op` and blocks the calling thread until its commit.
    ///
    /// Sync callers are bounded by the threads that can block here, so they
    /// do not take a permit.
    pub fn submit_blocking(&self, op: Op) -> Result<Outcome, JournalError> {
        self.submit_deferred(op)?.wait()
    }

    /// Queues `op` now and returns the wait for its commit, for a caller
    /// with something to do meanwhile. Blocks the thread that waits.
    pub fn submit_deferred(&self, op: Op) -> Result<CommitWait, JournalError> {
        let (sender, receiver) = sync_channel(1);
        self.send(Job::now(op, Reply::Blocking(sender), None))?;
        Ok(CommitWait {
            receiver,
            path: self.path.clone(),
        })
    }

    /// Queues `op` now, in order before anything queued after this returns,
    /// and returns the wait for its commit, for the runtime. Like
    /// [`WriterHandle::submit_queued`], it takes no place in the bounded
    /// queue: its callers (one per running run) are few.
    pub fn submit_now(
        &self,
        op: Op,
    ) -> impl Future<Output = Result<Outcome, JournalError>> + Send + 'static {
        let (sender, receiver) = oneshot::channel();
        let sent = self.send(Job::now(op, Reply::Async(sender), None));
        let path = self.path.clone();
        async move {
            sent?;
            receiver.await.map_err(|_| stopped_error(&path))?
        }
    }

    /// Queues `op` without waiting for its commit. Writes keep the order
    /// they were queued in, whoever waits for them.
    pub fn submit_queued(&self, op: Op) -> Result<(), JournalError> {
        self.send(Job::now(op, Reply::Nobody, None))
    }

    fn send(&self, job: Job) -> Result<(), JournalError> {
        self.sender.send(job).map_err(|_| self.stopped())
    }

    fn stopped(&self) -> JournalError {
        stopped_error(&self.path)
    }
}

/// `count` gathered answers in order, a missing one as the writer stopped.
fn in_order(count: usize, answers: Vec<Option<Answer>>, path: &Path) -> Vec<Answer> {
    let mut answers = answers.into_iter();
    (0..count)
        .map(|_| {
            answers
                .next()
                .flatten()
                .unwrap_or_else(|| Err(stopped_error(path)))
        })
        .collect()
}

/// Starts the writer thread on `conn`. The thread ends when every handle is dropped.
pub(crate) fn spawn(
    conn: Connection,
    settings: WriterSettings,
) -> std::io::Result<(WriterHandle, JoinHandle<()>)> {
    let (sender, receiver) = channel();
    let counters = Arc::new(WriterCounters::default());
    let handle = WriterHandle {
        sender,
        permits: Arc::new(Semaphore::new(settings.queue_capacity.max(1))),
        capacity: settings.queue_capacity.max(1),
        path: settings.path.as_path().into(),
        counters: counters.clone(),
    };
    // At most 15 bytes: what the kernel keeps of a thread's name, and what
    // `top`, `perf` and `zoomwire bench` show.
    let thread = std::thread::Builder::new()
        .name("zoomwire-writer".into())
        .spawn(move || write_loop(conn, receiver, &settings, &counters))?;
    Ok((handle, thread))
}

fn write_loop(
    mut conn: Connection,
    receiver: Receiver<Job>,
    settings: &WriterSettings,
    counters: &WriterCounters,
) {
    let mut voided = Voided::default();
    let events = IndexWriter::new(settings.events.clone());
    while let Some(first) = next_job(&mut conn, &receiver, settings) {
        let mut batch = vec![first];
        take_waiting(&receiver, &mut batch, settings.max_batch);
        wait_for_company(&receiver, &mut batch, settings);
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters
            .jobs
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        counters
            .largest_batch
            .fetch_max(batch.len() as u64, Ordering::Relaxed);
        commit_batch(&mut conn, batch, settings, &events, &mut voided);
    }
}

/// Adds the jobs waiting in the queue to `batch`, up to `most` in all.
fn take_waiting(receiver: &Receiver<Job>, batch: &mut Vec<Job>, most: usize) {
    while batch.len() < most {
        match receiver.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

/// A batch of [`Haste::MayWait`] jobs only waits, up to
/// [`WriterSettings::may_wait`], for a job of another kind (or for
/// [`MOST_WAITING`] of them) to commit with; every job that comes
/// meanwhile joins it. Returns at once for any other batch.
fn wait_for_company(receiver: &Receiver<Job>, batch: &mut Vec<Job>, settings: &WriterSettings) {
    if settings.may_wait.is_zero() {
        return;
    }
    let most = settings.max_batch.min(MOST_WAITING);
    let until = Instant::now() + settings.may_wait;
    while batch.len() < most && batch.iter().all(|job| job.haste == Haste::MayWait) {
        let left = until.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(left) {
            Ok(job) => {
                batch.push(job);
                take_waiting(receiver, batch, settings.max_batch);
            }
            // Time is up, or every handle is gone: commit what there is.
            Err(_) => break,
        }
    }
}

/// The next job; when none is waiting, first the log's rewind if the
/// checkpoint thread asked for it, so that no commit waits behind it.
fn next_job(
    conn: &mut Connection,
    receiver: &Receiver<Job>,
    settings: &WriterSettings,
) -> Option<Job> {
    match receiver.try_recv() {
        Ok(job) => Some(job),
        Err(TryRecvError::Disconnected) => None,
        Err(TryRecvError::Empty) => {
            settings.log_restart.finish_if_asked(conn);
            receiver.recv().ok()
        }
    }
}

/// The runs of events whose commit failed after they were told fresh
/// ([`WriterHandle::submit_all_early`]): their runs may have started, and
/// every later write for them is refused. Only grows on failed commits.
#[derive(Default)]
struct Voided(HashSet<String>);

impl Voided {
    fn refuses(&self, op: &Op) -> bool {
        !self.0.is_empty() && run_of(op).is_some_and(|id| self.0.contains(id))
    }

    fn add(&mut self, op: &Op) {
        if let Op::Accept { runs, .. } = op {
            self.0.extend(runs.iter().map(|run| run.id.clone()));
        }
    }
}

/// The run an op writes to, if any.
fn run_of(op: &Op) -> Option<&str> {
    match op {
        Op::RecordRun(run) => Some(&run.id),
        Op::Effect { run_id, .. } | Op::EffectStart { run_id, .. } => Some(run_id),
        Op::MarkDead { id, .. } | Op::Requeue { id } => Some(id),
        _ => None,
    }
}

/// The early answers of a batch's jobs, sent once their ops ran.
struct Early {
    replies: Vec<Option<Reply>>,
    /// Told fresh: the job's runs may have started.
    fresh: Vec<bool>,
}

impl Early {
    fn take(batch: &mut [Job]) -> Early {
        Early {
            replies: batch.iter_mut().map(|job| job.executed.take()).collect(),
            fresh: vec![false; batch.len()],
        }
    }

    /// Sends the executed answer of job `index`, unless sent already.
    fn tell(&mut self, index: usize, outcome: &Outcome) {
        if let Some(reply) = self.replies[index].take() {
            let fresh = matches!(outcome, Outcome::Accepted(true));
            self.fresh[index] = fresh;
            reply.send(Ok(Outcome::Accepted(fresh)));
        }
    }

    /// Settles job `index` after its commit: an early answer still owed
    /// gets `result`'s error; runs told fresh are voided unless it committed fresh.
    fn settle(&mut self, index: usize, op: &Op, result: &Answer, voided: &mut Voided) {
        if let (Some(reply), Err(error)) = (self.replies[index].take(), result) {
            reply.send(Err(JournalError(error.0.clone())));
        }
        if self.fresh[index] && !matches!(result, Ok(Outcome::Accepted(true))) {
            voided.add(op);
        }
    }
}

/// Commits a batch in one transaction; on failure (logged), each job alone.
fn commit_batch(
    conn: &mut Connection,
    batch: Vec<Job>,
    settings: &WriterSettings,
    events: &IndexWriter,
    voided: &mut Voided,
) {
    let started = Instant::now();
    let size = batch.len();
    let mut batch = refuse_voided(batch, voided);
    if batch.is_empty() {
        return;
    }
    let mut early = Early::take(&mut batch);
    let tried = apply_in_transaction(
        conn,
        batch.iter().map(|job| &job.op),
        settings,
        events,
        |outcomes| {
            outcomes
                .iter()
                .enumerate()
                .for_each(|(index, outcome)| early.tell(index, outcome))
        },
    );
    match tried {
        Ok(outcomes) => {
            for (job, outcome) in batch.into_iter().zip(outcomes) {
                job.reply.send(Ok(outcome));
            }
        }
        Err(error) if batch.len() == 1 => {
            let error = journal_error(&settings.path, &error);
            tracing::error!(error = %error, "journal write failed");
            let job = batch.remove(0);
            let result = Err(error);
            early.settle(0, &job.op, &result, voided);
            job.reply.send(result);
        }
        Err(batch_error) => {
            // Said once: a failure that only a whole batch meets (one job's
            // statement, or the size of the commit itself) would otherwise
            // show only as every job succeeding alone, one commit each.
            tracing::warn!(jobs = size, error = %journal_error(&settings.path, &batch_error), "a batch of journal writes failed; writing each alone");
            for (index, job) in batch.into_iter().enumerate() {
                let once = std::iter::once(&job.op);
                let result = apply_in_transaction(conn, once, settings, events, |o| {
                    early.tell(index, &o[0])
                })
                .map(|mut outcomes| outcomes.remove(0))
                .map_err(|e| journal_error(&settings.path, &e));
                if let Err(error) = &result {
                    tracing::error!(error = %error, "journal write failed");
                }
                early.settle(index, &job.op, &result, voided);
                job.reply.send(result);
            }
        }
    }
    metrics::histogram!("zoomwire_journal_batch_size").record(size as f64);
    metrics::histogram!("zoomwire_journal_commit_seconds").record(started.elapsed().as_secs_f64());
}

/// The batch without the writes for voided runs, which are answered with an error.
fn refuse_voided(batch: Vec<Job>, voided: &Voided) -> Vec<Job> {
    if voided.0.is_empty() {
        return batch;
    }
    let (refused, kept): (Vec<Job>, Vec<Job>) =
        batch.into_iter().partition(|job| voided.refuses(&job.op));
    for job in refused {
        job.reply.send(Err(JournalError(
            "not written: the run's event could not be written to the store".into(),
        )));
    }
    kept
}

/// Runs `ops` in one transaction; `executed` sees their outcomes just before
/// the commit. The transaction also carries the event index's next chunk.
fn apply_in_transaction<'a>(
    conn: &mut Connection,
    ops: impl Iterator<Item = &'a Op>,
    settings: &WriterSettings,
    events: &IndexWriter,
    executed: impl FnOnce(&[Outcome]),
) -> rusqlite::Result<Vec<Outcome>> {
    let result = try_transaction(conn, ops, settings, events, executed);
    events.after_commit(result.is_ok());
    result
}

fn try_transaction<'a>(
    conn: &mut Connection,
    ops: impl Iterator<Item = &'a Op>,
    settings: &WriterSettings,
    events: &IndexWriter,
    executed: impl FnOnce(&[Outcome]),
) -> rusqlite::Result<Vec<Outcome>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    events.begin(&tx)?;
    let at = Apply::new(
        &tx,
        to_nanos(Utc::now()),
        settings.dedupe_window_nanos,
        &settings.seal,
        events,
    );
    let outcomes = ops
        .map(|op| apply(&tx, op, &at))
        .collect::<rusqlite::Result<Vec<_>>>()?;
    // Every statement back in the cache, reset, before the commit.
    drop(at);
    events.before_commit(&tx)?;
    executed(&outcomes);
    tx.commit()?;
    Ok(outcomes)
}

/// A write failure as the engine reports it, naming the store and, for a full
/// disk, saying that nothing was written.
pub(crate) fn journal_error(path: &Path, error: &rusqlite::Error) -> JournalError {
    let path = path.display();
    JournalError(match error.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => format!(
            "the store {path} is full (no space left on its disk, or its size cap reached): \
             nothing was written ({error})"
        ),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            format!("the store {path} is damaged: {error}")
        }
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            format!("the store {path} is locked by another process: {error}")
        }
        _ => format!("writing to the store {path}: {error}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings(dir: &Path) -> WriterSettings {
        WriterSettings {
            path: dir.join("zoomwire.db"),
            seal: Arc::new(SealKey::ephemeral().unwrap()),
            dedupe_window_nanos: 1,
            max_batch: 16,
            queue_capacity: 16,
            log_restart: LogRestart::default(),
            events: Arc::default(),
            may_wait: Duration::ZERO,
        }
    }

    /// The writer's connection to a fresh store at `path`, unverified and uncapped.
    fn open(path: &Path, sync: crate::journal::JournalSync) -> Connection {
        super::super::schema::open_writer(path, Duration::from_secs(1), false, None, sync).unwrap()
    }

    /// Log lines, as a subscriber writes them.
    #[derive(Clone, Default)]
    struct Logs(Arc<parking_lot::Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn set(key: &str) -> Op {
        Op::StateSet {
            rule: "r".into(),
            key: key.into(),
            value: "1".into(),
            expires_at: None,
            max_keys: usize::MAX,
        }
    }

    #[test]
    fn one_failing_job_does_not_fail_the_others_in_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path());
        let mut conn = open(&settings.path, crate::journal::JournalSync::Full);
        conn.execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON state WHEN NEW.key = 'bad'
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
        )
        .unwrap();
        let mut receivers = Vec::new();
        let jobs = ["a", "bad", "c"]
            .into_iter()
            .map(|key| {
                let (sender, receiver) = sync_channel(1);
                receivers.push(receiver);
                Job::now(set(key), Reply::Blocking(sender), None)
            })
            .collect();
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let events = IndexWriter::new(settings.events.clone());
            commit_batch(&mut conn, jobs, &settings, &events, &mut Voided::default());
        });
        let logged = String::from_utf8(logs.0.lock().clone()).unwrap();
        assert!(
            logged.contains("a batch of journal writes failed; writing each alone")
                && logged.contains("jobs=3")
                && logged.contains("refused by the test"),
            "the batch's failure is said once, with its cause: {logged}"
        );
        let results: Vec<_> = receivers.iter().map(|r| r.recv().unwrap()).collect();
        assert!(results[0].is_ok());
        let error = results[1].as_ref().unwrap_err();
        assert!(error.0.contains("refused by the test"), "{error}");
        assert!(error.0.contains("zoomwire.db"), "names the store: {error}");
        assert!(results[2].is_ok());
        let kept: i64 = conn
            .query_row("SELECT count(*) FROM state", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, 2);
    }

    #[test]
    fn answers_come_after_the_commit_and_the_thread_ends_with_its_handles() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path());
        let path = settings.path.clone();
        let conn = open(&path, crate::journal::JournalSync::Full);
        let (handle, thread) = spawn(conn, settings).unwrap();
        handle.submit_blocking(set("k")).unwrap();
        // A separate connection sees the change as soon as the answer came.
        let reader = Connection::open(&path).unwrap();
        let count: i64 = reader
            .query_row("SELECT count(*) FROM state", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 1);
        drop(handle);
        thread.join().unwrap();
    }

    #[test]
    fn submit_all_answers_each_job_in_order_and_once_a_failing_one_alone() {
        let dir = tempfile::tempdir().unwrap();
        let settings = WriterSettings {
            // Fewer permits than jobs: the batch takes what there is.
            queue_capacity: 2,
            ..settings(dir.path())
        };
        let conn = open(&settings.path, crate::journal::JournalSync::Full);
        conn.execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON state WHEN NEW.key = 'bad'
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
        )
        .unwrap();
        let (handle, thread) = spawn(conn, settings).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let ops = ["a", "bad", "c"].map(set).into();
        let answers = runtime.block_on(handle.submit_all(ops));
        assert_eq!(answers.len(), 3);
        assert!(answers[0].is_ok());
        let error = answers[1].as_ref().unwrap_err();
        assert!(error.0.contains("refused by the test"), "{error}");
        assert!(answers[2].is_ok());
        assert!(runtime.block_on(handle.submit_all(Vec::new())).is_empty());
        drop(handle);
        thread.join().unwrap();
    }

    /// Nobody waits: the answers go, in order, to a call on the writer's
    /// own thread once committed; and still come (as errors) when the
    /// writer has stopped.
    #[test]
    fn detached_answers_are_given_on_the_writers_thread_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path());
        let conn = open(&settings.path, crate::journal::JournalSync::Full);
        conn.execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON state WHEN NEW.key = 'bad'
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
        )
        .unwrap();
        let path = settings.path.clone();
        let (handle, thread) = spawn(conn, settings).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (sender, answered) = sync_channel(2);
        let detached = |sender: SyncSender<_>| -> Box<dyn FnOnce(Vec<Answer>) + Send> {
            Box::new(move |answers: Vec<Answer>| {
                let thread = std::thread::current().name().map(str::to_string);
                let oks: Vec<bool> = answers.iter().map(Result::is_ok).collect();
                let _ = sender.send((thread, oks, answers));
            })
        };
        let ops = ["a", "bad", "c"].map(set).into();
        runtime.block_on(handle.submit_all_detached(ops, Haste::Now, detached(sender.clone())));
        let (thread_name, oks, answers) = answered.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(thread_name.as_deref(), Some("zoomwire-writer"));
        assert_eq!(oks, [true, false, true]);
        assert!(
            answers[1]
                .as_ref()
                .unwrap_err()
                .0
                .contains("refused by the test")
        );
        let reader = Connection::open(&path).unwrap();
        let count: i64 = reader
            .query_row("SELECT count(*) FROM state", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 2, "written before the answers were given");

        // Stopped: answered at once, on the caller's thread, each an error.
        let stopped = WriterHandle {
            sender: channel().0,
            ..handle
        };
        drop(handle.sender);
        thread.join().unwrap();
        runtime.block_on(stopped.submit_all_detached(vec![set("d")], Haste::Now, detached(sender)));
        let (_, oks, answers) = answered.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(oks, [false]);
        assert!(answers[0].as_ref().unwrap_err().0.contains("stopped"));
    }

    /// A writer on a fresh store with `settings`, and a runtime to submit from.
    fn started(
        settings: WriterSettings,
    ) -> (WriterHandle, JoinHandle<()>, tokio::runtime::Runtime) {
        let conn = open(&settings.path, crate::journal::JournalSync::Full);
        let (handle, thread) = spawn(conn, settings).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        (handle, thread, runtime)
    }

    /// Submits `ops` as jobs nobody waits for: their answers come on the
    /// channel returned, once given.
    fn submit_unwaited(
        runtime: &tokio::runtime::Runtime,
        handle: &WriterHandle,
        ops: Vec<Op>,
    ) -> Receiver<Vec<Answer>> {
        let (sender, answered) = sync_channel(1);
        let done = Box::new(move |answers| {
            let _ = sender.send(answers);
        });
        runtime.block_on(handle.submit_all_detached(ops, Haste::MayWait, done));
        answered
    }

    #[test]
    fn jobs_nobody_waits_for_share_the_next_commit_somebody_waits_for() {
        let dir = tempfile::tempdir().unwrap();
        let (handle, thread, runtime) = started(WriterSettings {
            // Longer than the test: only company (or the end) commits them.
            may_wait: Duration::from_secs(3600),
            ..settings(dir.path())
        });
        let first = submit_unwaited(&runtime, &handle, vec![set("a"), set("b")]);
        let second = submit_unwaited(&runtime, &handle, vec![set("c")]);
        assert!(
            first.recv_timeout(Duration::from_millis(300)).is_err(),
            "committed without company"
        );
        assert_eq!(handle.counters.batches.load(Ordering::Relaxed), 0);

        // A job somebody waits for: one commit for all of them.
        assert!(runtime.block_on(handle.submit(set("d"))).is_ok());
        for answered in [first, second] {
            let answers = answered.recv_timeout(Duration::from_secs(10)).unwrap();
            assert!(answers.iter().all(Result::is_ok));
        }
        assert_eq!(handle.counters.batches.load(Ordering::Relaxed), 1);
        assert_eq!(handle.counters.jobs.load(Ordering::Relaxed), 4);

        // The writer's end commits those still waiting.
        let last = submit_unwaited(&runtime, &handle, vec![set("e")]);
        drop(handle);
        thread.join().unwrap();
        let answers = last.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(answers[0].is_ok(), "{answers:?}");
    }

    #[test]
    fn jobs_nobody_waits_for_wait_at_most_their_time_or_for_a_full_batch() {
        let dir = tempfile::tempdir().unwrap();
        let may_wait = Duration::from_millis(200);
        let (handle, thread, runtime) = started(WriterSettings {
            may_wait,
            max_batch: 1024,
            queue_capacity: 1024,
            ..settings(dir.path())
        });
        let sent = Instant::now();
        let answered = submit_unwaited(&runtime, &handle, vec![set("a")]);
        let answers = answered.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(answers[0].is_ok());
        assert!(
            sent.elapsed() >= may_wait,
            "committed after {:?}",
            sent.elapsed()
        );

        // As many as wait together at most: committed without waiting.
        let ops = (0..MOST_WAITING).map(|n| set(&format!("k{n}"))).collect();
        let sent = Instant::now();
        let answered = submit_unwaited(&runtime, &handle, ops);
        let answers = answered.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(answers.len(), MOST_WAITING);
        assert!(answers.iter().all(Result::is_ok));
        assert!(sent.elapsed() < may_wait, "waited {:?}", sent.elapsed());
        drop(handle);
        thread.join().unwrap();
    }

    /// An accept of `runs` (rule names) for the event numbered `n`.
    fn accept(n: u32, rules: &[&str]) -> Op {
        use crate::engine::journal::{RunRecord, RunStatus};
        let body = serde_json::json!({"event": "a.b", "event_ts": n, "payload": {"n": n}});
        let event = crate::event::Event::from_value(&body, crate::event::Source::Test).unwrap();
        let runs = rules
            .iter()
            .map(|rule| {
                let id = format!("{rule}-{n}");
                RunRecord::for_test(&id, rule, &event.id, "a.b", RunStatus::Pending)
            })
            .collect();
        Op::Accept {
            event: super::super::ops::EventRow::new(&event),
            runs,
        }
    }

    /// The status a run is stored with, if it is stored.
    fn stored_status(path: &Path, run: &str) -> Option<String> {
        let reader = Connection::open(path).unwrap();
        reader
            .query_row("SELECT status FROM runs WHERE id = ?1", [run], |r| r.get(0))
            .ok()
    }

    #[test]
    fn an_early_accept_is_answered_before_its_commit_and_a_failed_commit_voids_its_runs() {
        use crate::engine::journal::{RunRecord, RunStatus};
        let dir = tempfile::tempdir().unwrap();
        let settings = WriterSettings {
            dedupe_window_nanos: 3_600_000_000_000,
            ..settings(dir.path())
        };
        let path = settings.path.clone();
        let conn = open(&path, crate::journal::JournalSync::Full);
        // A run of rule `doomed` breaks a deferred constraint: its
        // statements run, its commit fails.
        conn.execute_batch(
            "PRAGMA foreign_keys = ON;
             CREATE TABLE doom_parent (id INTEGER PRIMARY KEY);
             CREATE TABLE doom (parent INTEGER REFERENCES doom_parent (id) DEFERRABLE INITIALLY DEFERRED);
             CREATE TRIGGER doomed AFTER INSERT ON runs WHEN NEW.rule = 'doomed'
             BEGIN INSERT INTO doom VALUES (1); END;",
        )
        .unwrap();
        let (handle, thread) = spawn(conn, settings).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let ops = vec![
            accept(1, &["fine"]),
            accept(2, &["doomed"]),
            accept(1, &["fine"]),
        ];
        let early = runtime.block_on(handle.submit_all_early(ops));
        let executed: Vec<_> = early.executed.iter().map(|a| format!("{a:?}")).collect();
        // Fresh, fresh (not yet known to fail), and the first one again: a duplicate.
        assert_eq!(
            executed,
            [
                "Ok(Accepted(true))",
                "Ok(Accepted(true))",
                "Ok(Accepted(false))"
            ]
        );
        let committed = handle.answers(3, runtime.block_on(early.committed).unwrap());
        assert!(
            matches!(committed[0], Ok(Outcome::Accepted(true))),
            "{committed:?}"
        );
        let error = committed[1].as_ref().unwrap_err();
        assert!(error.0.contains("FOREIGN KEY"), "{error}");
        assert!(
            matches!(committed[2], Ok(Outcome::Accepted(false))),
            "{committed:?}"
        );
        // The runs told fresh went on; only the committed one is written.
        let running = |id: &str| {
            let mut run = RunRecord::for_test(id, "r", "e", "a.b", RunStatus::Running);
            run.started_at = Some(Utc::now());
            Op::RecordRun(Box::new(run))
        };
        assert!(handle.submit_blocking(running("fine-1")).is_ok());
        let refused = handle.submit_blocking(running("doomed-2")).unwrap_err();
        assert!(refused.0.contains("not written"), "{refused}");
        assert_eq!(stored_status(&path, "fine-1").as_deref(), Some("running"));
        assert_eq!(stored_status(&path, "doomed-2"), None);
        drop(handle);
        thread.join().unwrap();
    }

    /// Not a check: the writer's cost on a bench-like stream, for measuring
    /// a change (`ZW_HARNESS_EVENTS`, `ZW_HARNESS_BATCH` events per batch).
    /// One event in nine starts a run that posts once; each run moves one
    /// step per batch (running, effect started, effect done, succeeded), as
    /// its awaited writes do. Prints the WAL frames written per event.
    ///
    /// `cargo test --release -p zoomwire-engine --lib writer_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a measuring harness, not a test"]
    fn writer_cost_harness() {
        use super::super::ops::EventRow;
        use crate::effects::gateway::{EffectRecord, EffectStart};
        use crate::engine::journal::{RunRecord, RunStatus};
        use crate::event::{Event, Source};
        let var = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let (events, per_batch) = (var("ZW_HARNESS_EVENTS", 9000), var("ZW_HARNESS_BATCH", 4));
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path());
        let mut conn = open(&settings.path, crate::journal::JournalSync::Normal);
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        // As the store opens it: with the filter of its table's keys.
        let events_index = IndexWriter::new(Arc::new(EventIndex::load(&conn).unwrap()));
        let body = |i: usize| {
            format!(
                r#"{{"event":"meeting.participant_joined","event_ts":{i},"payload":{{"account_id":"acc-{i}","object":{{"id":"{}","uuid":"u{:016x}/abc==","host_id":"host-1","topic":"Weekly sync of the team {i}","type":2,"start_time":"2026-12-04T10:00:00Z","timezone":"UTC","participant":{{"user_id":"{i}","user_name":"Person {i}","id":"p{i}","participant_uuid":"{:032x}","join_time":"2026-12-04T10:00:{:02}Z","email":"person{i}@example.com"}}}}}}}}"#,
                80_000_000 + i,
                i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                i.wrapping_mul(0x2545_f491_4f6c_dd1d),
                i % 60
            )
        };
        let mut in_flight: Vec<(RunRecord, u8)> = Vec::new();
        let mut next_run = 0u64;
        let started = std::time::Instant::now();
        let mut sent = 0;
        while sent < events || !in_flight.is_empty() {
            let mut ops = Vec::new();
            // Runs started earlier take their next step.
            for (run, step) in &mut in_flight {
                *step += 1;
                let now = Utc::now();
                match *step {
                    1 => {
                        run.status = RunStatus::Running;
                        run.started_at = Some(now);
                        ops.push(Op::RecordRun(Box::new(run.clone())));
                    }
                    2 => ops.push(Op::EffectStart {
                        run_id: run.id.clone(),
                        start: Box::new(EffectStart {
                            seq: 1,
                            name: "slack.post".into(),
                            args: serde_json::json!({"channel": "#ops", "text": format!("{} joined", run.id)}),
                            started_at: now,
                        }),
                    }),
                    3 => ops.push(Op::Effect {
                        run_id: run.id.clone(),
                        record: Box::new(post(run, now)),
                    }),
                    _ => {
                        run.status = RunStatus::Succeeded;
                        run.effects = vec![post(run, now)];
                        run.output = Some(serde_json::json!({"posted": true}));
                        run.finished_at = Some(now);
                        ops.push(Op::RecordObservedRun(Box::new(run.clone())));
                    }
                }
            }
            in_flight.retain(|(_, step)| *step < 4);
            for _ in 0..per_batch.min(events - sent) {
                let event = Event::parse(&body(sent), Source::Websocket("main".into())).unwrap();
                let mut runs = Vec::new();
                if sent % 9 == 0 {
                    next_run += 1;
                    let id = format!(
                        "r{:012x}{:04x}{:06x}",
                        Utc::now().timestamp_millis(),
                        next_run % 0x10000,
                        next_run * 7919 % 0x100_0000
                    );
                    let rule = format!("rule-{}", sent % 10);
                    let run = RunRecord::for_test(
                        &id,
                        &rule,
                        &event.id,
                        &event.event_type,
                        RunStatus::Pending,
                    );
                    in_flight.push((run.clone(), 0));
                    runs.push(run);
                }
                ops.push(Op::Accept {
                    event: EventRow::new(&event),
                    runs,
                });
                sent += 1;
            }
            apply_in_transaction(&mut conn, ops.iter(), &settings, &events_index, |_| ()).unwrap();
        }
        let elapsed = started.elapsed();
        let wal = std::fs::metadata(dir.path().join("zoomwire.db-wal"))
            .unwrap()
            .len();
        let frames = wal.saturating_sub(32) / (4096 + 24);
        println!(
            "harness: {events} events, {per_batch} per batch, {next_run} runs: {frames} WAL frames, {:.2} frames/event, {:.1} us/event",
            frames as f64 / events as f64,
            elapsed.as_secs_f64() * 1e6 / events as f64
        );
        print_frames_by_btree(&conn, &dir.path().join("zoomwire.db-wal"), events);

        /// Which B-tree each WAL frame's page belongs to (`dbstat`), per event.
        fn print_frames_by_btree(conn: &Connection, wal: &Path, events: usize) {
            let owner: std::collections::HashMap<i64, String> = conn
                .prepare("SELECT pageno, name FROM dbstat")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let bytes = std::fs::read(wal).unwrap();
            let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
            let mut commits = 0;
            for frame in bytes[32..].chunks_exact(4096 + 24) {
                let page = i64::from(u32::from_be_bytes(frame[..4].try_into().unwrap()));
                if frame[4..8] != [0; 4] {
                    commits += 1;
                }
                let name = owner
                    .get(&page)
                    .cloned()
                    .unwrap_or_else(|| "(free/other)".into());
                *counts.entry(name).or_default() += 1;
            }
            let mut counts: Vec<_> = counts.into_iter().collect();
            counts.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
            println!("harness: {commits} commits");
            for (name, n) in counts {
                println!(
                    "harness:   {name:24} {n:7} frames {:.3}/event {:.2}/commit",
                    n as f64 / events as f64,
                    n as f64 / commits.max(1) as f64
                );
            }
        }

        fn post(run: &RunRecord, now: chrono::DateTime<Utc>) -> EffectRecord {
            EffectRecord {
                seq: 1,
                name: "slack.post".into(),
                args: serde_json::json!({"channel": "#ops", "text": format!("{} joined", run.id)}),
                result: Ok(serde_json::json!({"ok": true, "ts": "1733300000.000100"})),
                unredacted: None,
                started_at: now,
                latency_ms: 3.2,
                replayed: false,
                in_doubt: false,
            }
        }
    }
}
