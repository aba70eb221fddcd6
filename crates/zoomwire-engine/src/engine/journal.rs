//! What the engine remembers of events and runs, and the [`Journal`] seam
//! through which it remembers them.
//!
//! The executor reports every step of a run here: pending before it starts,
//! running, each effect as it completes, and the outcome. The journals in
//! `crate::journal` implement it: in memory (`fire`, `replay`, tests, and
//! the daemon's `memory` mode), SQLite and PostgreSQL, which make it
//! durable, so that a crash resumes unfinished runs.

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::effects::gateway::{EffectObserver, EffectRecord, EffectStart, EventCommit, LogLine};
use crate::event::Event;

/// The commit of a queued run record ([`Journal::queue_observed_run`]).
pub type RunSaving = BoxFuture<'static, Result<(), JournalError>>;

/// Receives the answers of [`Journal::accept_events_detached`].
pub type DetachedAccept = Box<dyn FnOnce(Vec<Result<bool, JournalError>>) + Send>;

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Recorded, not started (waiting for its turn under the rule's mode).
    Pending,
    Running,
    Succeeded,
    /// Failed; may be retried.
    Failed,
    /// Failed and out of retries: kept as a dead letter.
    Dead,
    /// Not run: dropped by the rule's mode (`single` busy, queue full),
    /// cancelled by `restart`, or its rule was removed.
    Skipped,
}

impl RunStatus {
    /// Every status, in the order lists offer them.
    pub const ALL: [RunStatus; 6] = [
        RunStatus::Pending,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Dead,
        RunStatus::Skipped,
    ];

    /// The status [`RunStatus::as_str`] names.
    pub fn from_name(name: &str) -> Option<RunStatus> {
        RunStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == name)
    }

    pub fn is_finished(self) -> bool {
        !matches!(self, RunStatus::Pending | RunStatus::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Dead => "dead",
            RunStatus::Skipped => "skipped",
        }
    }
}

/// One rule fired by one event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub rule: String,
    pub event_id: String,
    pub event_type: String,
    /// The concurrency key from the rule's `key:` expression, if any.
    pub key: Option<String>,
    pub status: RunStatus,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Why the run failed, was skipped or died.
    pub error: Option<String>,
    /// Effects of the latest attempt, completed ones replayed from earlier attempts.
    pub effects: Vec<EffectRecord>,
    pub logs: Vec<LogLine>,
    /// The script's return value, as JSON.
    pub output: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
impl RunRecord {
    /// A first attempt of `rule` for the event `event_id` of `event_type`,
    /// created now, in `status`, with nothing else recorded: the journals'
    /// tests build on it (`RunRecord { field, ..RunRecord::for_test(..) }`).
    pub(crate) fn for_test(
        id: &str,
        rule: &str,
        event_id: &str,
        event_type: &str,
        status: RunStatus,
    ) -> RunRecord {
        RunRecord {
            id: id.into(),
            rule: rule.into(),
            event_id: event_id.into(),
            event_type: event_type.into(),
            key: None,
            status,
            attempt: 1,
            error: None,
            effects: Vec::new(),
            logs: Vec::new(),
            output: None,
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
        }
    }
}

/// Why the journal could not record something. Intake stops on these.
#[derive(Debug, Clone, thiserror::Error)]
#[error("journal: {0}")]
pub struct JournalError(pub String);

/// The answers of [`Journal::accept_events_early`].
pub struct EarlyAccepts {
    /// Per event, once its statements ran, before their commit: `Ok(true)`
    /// is fresh, and its runs may start, their effects waiting for the commit.
    pub executed: Vec<Result<bool, JournalError>>,
    /// The final answers, once each event committed or failed, in the same
    /// order: what [`Journal::accept_events_with_runs`] would have answered.
    pub committed: BoxFuture<'static, Vec<Result<bool, JournalError>>>,
    /// Per event, its commit, which the journal resolves as it happens (so
    /// that the runs waiting on it are woken from there); one not
    /// [`EventCommit::is_awaited`] (the default: answered after the
    /// commit) means `executed` is already final.
    pub commits: Vec<EventCommit>,
}

impl EarlyAccepts {
    /// Answers given once, after the commit: `executed` is already final.
    pub fn after_commit(committed: Vec<Result<bool, JournalError>>) -> EarlyAccepts {
        EarlyAccepts {
            commits: committed.iter().map(|_| EventCommit::committed()).collect(),
            executed: committed.clone(),
            committed: Box::pin(std::future::ready(committed)),
        }
    }
}

/// A run to resume after a restart, with the event that triggered it.
#[derive(Debug, Clone)]
pub struct UnfinishedRun {
    pub run: RunRecord,
    pub event: Event,
    /// Effects written as started and never as done: a crash came while
    /// they were being performed (at most one per run, the one in flight).
    pub in_doubt: Vec<EffectStart>,
}

/// Where events and runs are remembered.
///
/// Effects that are not harmless to repeat are written as started
/// ([`EffectObserver::effect_starting`]) before they are performed, and the
/// record of each replaces its mark; [`Journal::unfinished_runs`] returns
/// the marks left without a record as the run's `in_doubt` effects, and
/// recording an effect at a position clears that position's mark. The
/// executor decides what a resumed run does with them (see `executor.rs`):
/// every journal, one process or several nodes, keeps the same rule.
pub trait Journal: EffectObserver + Send + Sync + 'static {
    /// Writes the event, with the records of the runs it starts (pending, or
    /// skipped when their condition failed), in one commit, before any of
    /// its runs makes an effect ([`Journal::accept_events_early`]): a crash leaves both or neither, so an accepted event never
    /// lacks its runs. `Ok(false)` means it is a duplicate of an event already
    /// accepted: nothing was written and nothing may run. Duplicates are
    /// counted in `zoomwire_events_duplicate_total`.
    fn accept_event_with_runs<'a>(
        &'a self,
        event: &'a Event,
        runs: &'a [RunRecord],
    ) -> BoxFuture<'a, Result<bool, JournalError>>;
    /// [`Journal::accept_event_with_runs`] for several events at once (an
    /// intake batch), answered in the order given: each event is still
    /// written all or nothing with its runs and answered on its own (fresh,
    /// a duplicate, or an error). A journal that can takes them as one
    /// request; the default writes them concurrently, one call each.
    fn accept_events_with_runs<'a>(
        &'a self,
        events: &'a [(&'a Event, &'a [RunRecord])],
    ) -> BoxFuture<'a, Vec<Result<bool, JournalError>>> {
        Box::pin(futures_util::future::join_all(
            events
                .iter()
                .map(|(event, runs)| self.accept_event_with_runs(event, runs)),
        ))
    }
    /// Whether [`Journal::accept_events_detached`] answers from the
    /// journal's own thread, so that its caller need not wait.
    fn answers_detached(&self) -> bool {
        false
    }
    /// [`Journal::accept_events_with_runs`] for events without runs, for a
    /// caller that does not wait for the write: `done` gets the answers, in
    /// order, once written, and must not block. A journal that
    /// [`Journal::answers_detached`] calls it on its own thread (nobody is
    /// woken for it) and ends the future once the events are queued; the
    /// default ends it once written, having called `done`.
    fn accept_events_detached<'a>(
        &'a self,
        events: &'a [&'a Event],
        done: DetachedAccept,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let events: Vec<(&Event, &[RunRecord])> =
                events.iter().map(|e| (*e, &[][..])).collect();
            done(self.accept_events_with_runs(&events).await)
        })
    }
    /// [`Journal::accept_events_with_runs`] answered twice: once the events'
    /// statements ran (before their commit), and once committed. A fresh
    /// executed answer can still end in a failed commit: then everything
    /// later written for its runs is refused. The default (the memory and
    /// PostgreSQL journals) answers both at once, after the commit.
    fn accept_events_early<'a>(
        &'a self,
        events: &'a [(&'a Event, &'a [RunRecord])],
    ) -> BoxFuture<'a, EarlyAccepts> {
        Box::pin(
            async move { EarlyAccepts::after_commit(self.accept_events_with_runs(events).await) },
        )
    }
    /// [`Journal::accept_event_with_runs`] without runs.
    fn accept_event<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<bool, JournalError>> {
        self.accept_event_with_runs(event, &[])
    }
    /// Inserts or updates a run (status, attempt, error, effects, logs, output).
    fn record_run<'a>(&'a self, run: &'a RunRecord) -> BoxFuture<'a, Result<(), JournalError>>;
    /// Queues the same change without waiting for its commit: it is written
    /// in order with everything queued after it (so before the effects the
    /// run then records), and a failure is logged by the journal. For
    /// records nothing depends on having reached the disk, such as a run
    /// turning `running` (a crash resumes pending and running runs alike).
    fn queue_run(&self, run: &RunRecord);
    /// [`Journal::record_run`] for a record whose effects were each given to
    /// this journal's [`EffectObserver`] as they completed (the executor's
    /// records of its runs): a journal that stores effects on their own
    /// need not write them again. The default writes the whole record.
    fn record_observed_run<'a>(
        &'a self,
        run: &'a RunRecord,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        self.record_run(run)
    }
    /// Queues a run's last record as [`Journal::record_observed_run`]
    /// writes it, before anything written after this returns, and gives the
    /// wait for its commit: the executor then hands the run's place to the
    /// next run at once, whose writes come after it (a crash in between
    /// resumes this run, as one before its commit would). `None` (the
    /// default): this journal cannot promise that order (the next run's
    /// place is claimed in a shared database), and the record is written
    /// with [`Journal::record_observed_run`] before the place is given up.
    fn queue_observed_run(&self, run: &RunRecord) -> Option<RunSaving> {
        let _ = run;
        None
    }
    /// Runs left pending or running, in the order their events arrived (the
    /// order the daemon admits runs in), so that queued runs resume in order.
    fn unfinished_runs(&self) -> BoxFuture<'_, Result<Vec<UnfinishedRun>, JournalError>>;
    /// Asks, just before a run starts, whether its rule and key have a free
    /// place across every node sharing the journal (`places`: 1 for
    /// `single`, `queued` and `restart`, `max_runs` for `parallel`), and if
    /// so marks it running there, in the order runs were written. `false`:
    /// every place is held, or an earlier run waits; ask again later (or,
    /// for `single`, drop it). A journal of one process always answers
    /// `true`: the executor's own admission already keeps the mode.
    fn claim_start<'a>(
        &'a self,
        run: &'a RunRecord,
        places: u32,
    ) -> BoxFuture<'a, Result<bool, JournalError>> {
        let _ = (run, places);
        Box::pin(async { Ok(true) })
    }
    /// The ids of the runs [`Journal::unfinished_runs`] would return, cheaply
    /// (polled by the daemon to find runs put back by `zoomwire runs retry`).
    fn unfinished_run_ids(&self) -> BoxFuture<'_, Result<Vec<String>, JournalError>> {
        Box::pin(async move {
            let runs = self.unfinished_runs().await?;
            Ok(runs.into_iter().map(|r| r.run.id).collect())
        })
    }
    /// Whether [`Journal::stored_event`] reads accepted events back: then a
    /// run waiting its turn holds only a small handle and reads its event
    /// when it starts (see `executor.rs`). `false`: waiting runs keep their
    /// event in memory.
    fn keeps_events(&self) -> bool {
        false
    }
    /// An accepted event read back by id, as intake built it; `None` when it
    /// is not in the store. Only asked when [`Journal::keeps_events`].
    fn stored_event<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Event>, JournalError>> {
        let _ = id;
        Box::pin(async { Ok(None) })
    }
    /// [`Journal::unfinished_runs`] among the runs `ids` names only: those
    /// still unfinished, in the same order. The daemon's poll for requeued
    /// runs reads its few candidates with it, not every unfinished run.
    fn unfinished_runs_among<'a>(
        &'a self,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<UnfinishedRun>, JournalError>> {
        Box::pin(async move {
            let wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
            let mut runs = self.unfinished_runs().await?;
            runs.retain(|r| wanted.contains(r.run.id.as_str()));
            Ok(runs)
        })
    }
}
