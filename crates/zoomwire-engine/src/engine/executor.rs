//! The executor: turns each (event, rule) match into a run and drives it
//! under the rule's mode ([`super::admission`]) and its attempts
//! ([`super::attempt`]).
//!
//! Every step is reported to the [`Journal`] (the event together with its
//! runs, pending, before any starts; running; each effect; the outcome),
//! which is the seam where durability fits. Handling an event is split in
//! [`Executor::prepare`] (match, no I/O), [`Executor::accept`] (one journal
//! write) and [`Executor::admit`] (no I/O), so that the daemon can journal
//! many events at once and still admit their runs in arrival order.
//!
//! A run the mode does not start now waits its turn; only `single`,
//! `restart` and an explicit `max_queued` drop runs, each with a WARN line, a
//! skipped record and a count. The number of waiting runs is published
//! ([`Executor::wait_for_room`]) so that intake can stop reading at a bound
//! instead of dropping. The executor knows which runs it holds
//! ([`Executor::is_active`]), so that the daemon can tell a run put back in
//! the store by `zoomwire runs retry` from one it is running.
//!
//! With a journal that answers early ([`Journal::accept_events_early`]), the
//! daemon admits an event's runs once its statements ran, before their
//! commit ([`Executor::accept_all_early`]): the run's effects wait for the
//! commit ([`EventCommit`]), and if it fails the run stops before any effect
//! and is not recorded (the journal refuses its writes) nor announced.
//!
//! A waiting run is checked when its turn comes: if a reload removed its
//! rule ([`Executor::with_current_rules`]), it is dropped as skipped with a
//! record saying so. Runs that already started finish with the rule they have.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use chrono::Utc;
use parking_lot::{Mutex, RwLock};
use rhai::Dynamic;
use tokio::sync::{broadcast, oneshot, watch};
use tokio_util::task::TaskTracker;

use super::admission::{CancelFlag, Decision, Policy, SlotKey, Slots};
use super::attempt::{RetryWaits, Run, Runner, write_again};
use super::held::{self, HeldEvents, Hold};
use super::journal::{Journal, JournalError, RunRecord, RunStatus, UnfinishedRun};
use super::matcher::{ConditionFailure, Matched, match_event};
use crate::effects::Effects;
use crate::effects::gateway::{EffectRecord, EffectStart, EventCommit};
use crate::event::Event;
use crate::rules::{Mode, Rule, RuleSet};
use crate::script::ScriptPool;
use futures_util::future::BoxFuture;

/// What happened to one event.
#[derive(Debug)]
pub struct EventOutcome {
    /// The journal had already accepted this event: nothing ran.
    pub duplicate: bool,
    /// One ticket per matched rule, in rule order.
    pub runs: Vec<RunTicket>,
    /// Rules whose condition failed to evaluate (recorded as skipped runs).
    pub condition_failures: usize,
}

/// A run that was admitted or skipped; `finished` resolves with its last record.
#[derive(Debug)]
pub struct RunTicket {
    pub run_id: String,
    pub rule: Arc<str>,
    pub finished: oneshot::Receiver<RunRecord>,
}

impl RunTicket {
    /// Waits for the run to finish.
    pub async fn wait(self) -> Option<RunRecord> {
        self.finished.await.ok()
    }
}

/// An event matched and its run records built, not yet journaled.
pub struct PreparedEvent {
    rule_set: Arc<RuleSet>,
    event: Event,
    /// The records the journal writes with the event, in one slice (so that
    /// none is cloned for it): the runs to start, in rule order, then the
    /// skipped records of rules whose condition failed.
    records: Vec<RunRecord>,
    /// The rules of the runs to start: `records[..rules.len()]`.
    rules: Vec<Arc<Rule>>,
    /// The names of the rules whose condition failed, in the same order.
    failed_rules: Vec<Arc<str>>,
    /// The event's commit, which its runs' effects wait for.
    commit: EventCommit,
}

impl PreparedEvent {
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// Whether the journal writes the event alone: no run, not even a
    /// skipped one (a rule whose condition failed).
    pub fn is_alone(&self) -> bool {
        self.records.is_empty()
    }

    pub fn into_event(self) -> Event {
        self.event
    }
}

/// Answers of [`Executor::accept_all_early`].
pub struct EarlyAccepted {
    /// Per event, once its statements ran: `Ok(true)` is fresh.
    pub executed: Vec<Result<bool, JournalError>>,
    committed: BoxFuture<'static, Vec<Result<bool, JournalError>>>,
    /// Per event told fresh before its commit: its type, counted once committed fresh.
    early_types: Vec<Option<String>>,
    executor: Executor,
}

impl EarlyAccepted {
    /// Whether every event was told fresh before its commit: then their
    /// runs may be admitted before [`EarlyAccepted::committed`].
    pub fn all_fresh_early(&self) -> bool {
        self.early_types.iter().all(Option::is_some)
    }

    /// Waits for the commits (the journal resolves the runs'
    /// [`EventCommit`]s as they happen) and counts the events told fresh
    /// early that committed. Returns the final answers, in order; those of
    /// events not admitted yet are settled by [`Executor::settle`].
    pub async fn committed(self) -> Vec<Result<bool, JournalError>> {
        let finals = self.committed.await;
        for (event_type, answer) in self.early_types.iter().zip(&finals) {
            if let (Some(event_type), Ok(true)) = (event_type, answer) {
                self.executor.inner.events_total.count(event_type);
            }
        }
        finals
    }
}

/// The runs of one event after admission; those a mode turned away still
/// need their skipped record ([`Executor::record_turned_away`]).
pub struct Admitted {
    outcome: EventOutcome,
    turned_away: Vec<(PendingRun, String)>,
}

/// Why a waiting run of a removed rule was dropped.
pub const RULE_REMOVED: &str = "its rule was removed by a reload";

/// Why `restart` dropped a waiting run.
const REPLACED: &str = "replaced by a newer run (mode restart)";

/// Why `single` dropped a run whose key runs on another node.
const SINGLE_ELSEWHERE: &str = "another node runs this rule and key (mode single)";

/// How often a run waiting for its key on another node asks again.
const CLUSTER_TURN_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// The names of the rules running now (the reloadable rule set).
pub trait RuleNames: Send + Sync {
    fn has_rule(&self, name: &str) -> bool;
}

/// Runs rules for events.
#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

struct Inner {
    runner: Runner,
    slots: Mutex<Slots<PendingRun>>,
    /// How many runs wait their turn, for intake's backpressure.
    waiting: watch::Sender<usize>,
    /// How many runs are started and not finished, for [`Executor::wait_idle`].
    started: watch::Sender<usize>,
    /// Ids of the runs this executor holds: recorded or about to be, and not
    /// yet recorded finished. A run the journal lists as unfinished that is
    /// not here was put back by `zoomwire runs retry`.
    active: Mutex<HashSet<String>>,
    finished: broadcast::Sender<RunRecord>,
    tracker: TaskTracker,
    /// Asked before a waiting run starts; none: waiting runs always start.
    current_rules: OnceLock<Arc<dyn RuleNames>>,
    events_total: EventCounters,
    /// What waiting runs may keep of their events ([`Executor::park`]).
    held_events: HeldEvents,
}

/// `zoomwire_events_total{type}`, one handle per event type, found by the
/// type's name: the metrics registry's own look-up takes an owned copy of
/// the label and hashes the whole key, for every event.
#[derive(Default)]
struct EventCounters(RwLock<HashMap<Box<str>, metrics::Counter>>);

impl EventCounters {
    fn count(&self, event_type: &str) {
        if let Some(counter) = self.0.read().get(event_type) {
            counter.increment(1);
            return;
        }
        self.0
            .write()
            .entry(event_type.into())
            .or_insert_with(
                || metrics::counter!("zoomwire_events_total", "type" => event_type.to_string()),
            )
            .increment(1);
    }
}

/// Everything needed to start a run later. While it waits its turn, a run
/// whose journal keeps events ([`Journal::keeps_events`]) keeps its event
/// only within the executor's budget ([`super::held`]); past it, it holds
/// none and reads it back when it starts ([`Executor::park`]).
struct PendingRun {
    rule_set: Arc<RuleSet>,
    rule: Arc<Rule>,
    event: Option<Event>,
    /// Its share of the budget, while it waits keeping its event.
    hold: Option<Hold>,
    record: RunRecord,
    replay: Vec<EffectRecord>,
    /// The ticket's sender; none when nobody waits on the run (the daemon).
    done: Option<oneshot::Sender<RunRecord>>,
    /// Its event's commit, which the run's effects wait for.
    commit: EventCommit,
}

impl PendingRun {
    fn slot_key(&self) -> SlotKey {
        SlotKey {
            rule: self.rule.name.clone(),
            key: self.record.key.clone(),
        }
    }
}

impl Executor {
    pub fn new(
        journal: Arc<dyn Journal>,
        effects: Arc<dyn Effects>,
        pool: Arc<ScriptPool>,
        vars: Dynamic,
    ) -> Executor {
        let (finished, _) = broadcast::channel(1024);
        Executor {
            inner: Arc::new(Inner {
                runner: Runner {
                    journal,
                    effects,
                    pool,
                    vars,
                    retry_waits: RetryWaits::Backoff,
                },
                slots: Mutex::default(),
                waiting: watch::Sender::new(0),
                started: watch::Sender::new(0),
                active: Mutex::default(),
                finished,
                tracker: TaskTracker::new(),
                current_rules: OnceLock::new(),
                events_total: EventCounters::default(),
                held_events: HeldEvents::default(),
            }),
        }
    }

    /// How runs wait before a retry (before any run is handled).
    pub fn with_retry_waits(mut self, waits: RetryWaits) -> Executor {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.runner.retry_waits = waits;
        }
        self
    }

    /// The bytes of event bodies waiting runs may keep (before any run is
    /// handled; tests, which wait with few and small events).
    #[cfg(test)]
    fn with_held_event_budget(mut self, bytes: usize) -> Executor {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.held_events = HeldEvents::new(bytes);
        }
        self
    }

    /// Drops waiting runs whose rule `rules` no longer has when their turn
    /// comes (set once; later calls are ignored).
    pub fn with_current_rules(self, rules: Arc<dyn RuleNames>) -> Executor {
        let _ = self.inner.current_rules.set(rules);
        self
    }

    /// Finished runs as they happen (for the demo and the admin API).
    pub fn subscribe(&self) -> broadcast::Receiver<RunRecord> {
        self.inner.finished.subscribe()
    }

    pub fn journal(&self) -> &Arc<dyn Journal> {
        &self.inner.runner.journal
    }

    /// Accepts an event into the journal, matches it and starts its runs:
    /// [`Executor::prepare`], [`Executor::accept`], [`Executor::admit`] and
    /// [`Executor::record_turned_away`] in a row.
    pub async fn handle_event(
        &self,
        rule_set: &Arc<RuleSet>,
        event: Event,
    ) -> Result<EventOutcome, JournalError> {
        let prepared = self.prepare(rule_set, event);
        if !self.accept(&prepared).await? {
            return Ok(EventOutcome {
                duplicate: true,
                runs: Vec::new(),
                condition_failures: 0,
            });
        }
        let admitted = self.admit(prepared);
        Ok(self.record_turned_away(admitted).await)
    }

    /// Matches an event and builds the records of its runs (pending, or
    /// skipped for a condition that failed). No I/O: nothing is written yet.
    pub fn prepare(&self, rule_set: &Arc<RuleSet>, mut event: Event) -> PreparedEvent {
        let matched = match_event(rule_set, &event, &self.inner.runner.vars);
        event.release_tree();
        let mut records = Vec::with_capacity(matched.matched.len() + matched.failures.len());
        let mut rules = Vec::with_capacity(matched.matched.len());
        for Matched { rule, key } in matched.matched {
            let record = new_record(&rule, &event, key);
            self.hold(&record.id);
            records.push(record);
            rules.push(rule);
        }
        let mut failed_rules = Vec::with_capacity(matched.failures.len());
        for failure in &matched.failures {
            records.push(condition_failure_record(&event, failure));
            failed_rules.push(failure.rule.name.clone());
        }
        PreparedEvent {
            rule_set: rule_set.clone(),
            event,
            records,
            rules,
            failed_rules,
            commit: EventCommit::committed(),
        }
    }

    /// Writes the event and the records of its runs to the journal, in one
    /// commit. `Ok(false)`: a duplicate, which must not run.
    pub async fn accept(&self, prepared: &PreparedEvent) -> Result<bool, JournalError> {
        let written = self
            .journal()
            .accept_event_with_runs(&prepared.event, &prepared.records)
            .await;
        self.accepted(prepared, written)
    }

    /// [`Executor::accept`] for a batch of events, as one journal request
    /// answered once the events' statements ran, before their commit
    /// ([`Journal::accept_events_early`]), and again once committed: an event
    /// told fresh gets a pending [`EventCommit`] for its runs, which may be
    /// admitted at once; [`EarlyAccepted::committed`] resolves it. An event
    /// not told fresh is settled on its final answer ([`Executor::settle`]).
    pub async fn accept_all_early(&self, prepared: &mut [PreparedEvent]) -> EarlyAccepted {
        let events: Vec<(&Event, &[RunRecord])> = prepared
            .iter()
            .map(|prepared| (&prepared.event, prepared.records.as_slice()))
            .collect();
        let early = self.journal().accept_events_early(&events).await;
        let early_types = prepared
            .iter_mut()
            .zip(early.executed.iter().zip(early.commits))
            .map(|(prepared, (executed, commit))| {
                (commit.is_awaited() && matches!(executed, Ok(true))).then(|| {
                    prepared.commit = commit;
                    prepared.event.event_type.clone()
                })
            })
            .collect();
        EarlyAccepted {
            executed: early.executed,
            committed: early.committed,
            early_types,
            executor: self.clone(),
        }
    }

    /// What [`Executor::accept`] does with the journal's answer, for the
    /// answers of [`EarlyAccepted::committed`], before admission: lets
    /// go of the runs of events not written, and counts the fresh ones not
    /// counted already.
    pub fn settle(
        &self,
        prepared: &[PreparedEvent],
        written: Vec<Result<bool, JournalError>>,
    ) -> Vec<Result<bool, JournalError>> {
        prepared
            .iter()
            .zip(written)
            .map(|(prepared, written)| {
                if !prepared.commit.is_awaited() {
                    return self.accepted(prepared, written);
                }
                if !matches!(written, Ok(true)) {
                    self.let_go(prepared);
                }
                written
            })
            .collect()
    }

    /// Lets go of the runs of an event not written: they will never be.
    fn let_go(&self, prepared: &PreparedEvent) {
        let runs = &prepared.records[..prepared.rules.len()];
        runs.iter().for_each(|r| self.forget(&r.id));
    }

    /// Lets go of the runs of an event not written; counts a fresh one.
    fn accepted(
        &self,
        prepared: &PreparedEvent,
        written: Result<bool, JournalError>,
    ) -> Result<bool, JournalError> {
        if !matches!(written, Ok(true)) {
            self.let_go(prepared);
        }
        let fresh = written?;
        if fresh {
            self.inner.events_total.count(&prepared.event.event_type);
        }
        Ok(fresh)
    }

    /// Starts the runs of an accepted event, or lets them wait, under their
    /// rules' modes. No I/O, so that a caller can admit events strictly in
    /// the order they arrived; the runs a mode dropped are recorded by
    /// [`Executor::record_turned_away`].
    pub fn admit(&self, prepared: PreparedEvent) -> Admitted {
        self.admit_with(prepared, true)
    }

    /// [`Executor::admit`] for a caller that does not wait on the runs (the
    /// daemon): no tickets, so a run that waits its turn holds no channel.
    pub fn admit_untracked(&self, prepared: PreparedEvent) -> Admitted {
        self.admit_with(prepared, false)
    }

    fn admit_with(&self, prepared: PreparedEvent, tracked: bool) -> Admitted {
        let PreparedEvent {
            rule_set,
            event,
            mut records,
            rules,
            failed_rules,
            commit,
        } = prepared;
        let failures = records.split_off(rules.len());
        for (record, rule) in failures.iter().zip(&failed_rules) {
            tracing::warn!(rule = %rule, event = %event.id, error = %record.error.as_deref().unwrap_or_default(), "condition failed");
            metrics::counter!("zoomwire_condition_errors_total", "rule" => rule.to_string())
                .increment(1);
        }
        let mut tickets = Vec::with_capacity(rules.len());
        let mut turned_away = Vec::new();
        for (rule, record) in rules.into_iter().zip(records) {
            let (mut pending, ticket) =
                pending_run(rule_set.clone(), rule, event.clone(), record, Vec::new());
            pending.commit = commit.clone();
            if tracked {
                tickets.push(ticket);
            } else {
                pending.done = None;
            }
            turned_away.extend(self.admit_one(pending));
        }
        Admitted {
            outcome: EventOutcome {
                duplicate: false,
                runs: tickets,
                condition_failures: failures.len(),
            },
            turned_away,
        }
    }

    /// Records the runs a mode dropped as skipped; returns the event's outcome.
    pub async fn record_turned_away(&self, admitted: Admitted) -> EventOutcome {
        for (run, reason) in admitted.turned_away {
            self.skip(run, reason).await;
        }
        admitted.outcome
    }

    /// Resumes a run left unfinished by a crash, replaying its recorded
    /// effects. An effect the crash left in doubt is recorded as such; unless
    /// the rule may repeat it ([`Rule::may_repeat`]), the run goes to the
    /// dead letters naming it instead of risking it twice (`zoomwire runs
    /// retry` performs it again, by the operator's choice).
    pub async fn resume(
        &self,
        rule_set: &Arc<RuleSet>,
        unfinished: UnfinishedRun,
    ) -> Result<RunTicket, JournalError> {
        let UnfinishedRun {
            mut run,
            event,
            in_doubt,
        } = unfinished;
        let mut replay = std::mem::take(&mut run.effects);
        let in_doubt = mark_in_doubt(&run, &mut replay, in_doubt);
        if run.status == RunStatus::Failed {
            // The crash came while waiting to retry: that attempt is over.
            run.attempt += 1;
        }
        run.status = RunStatus::Pending;
        let Some(rule) = rule_set.rule(&run.rule) else {
            let why = "its rule no longer exists".to_string();
            return self
                .end_unresumed(run, replay, RunStatus::Skipped, why)
                .await;
        };
        if let Some(effect) = in_doubt.iter().find(|e| !rule.may_repeat(&e.name)) {
            let why = in_doubt_error(effect);
            return self.end_unresumed(run, replay, RunStatus::Dead, why).await;
        }
        let id = run.id.clone();
        self.hold(&id);
        let submitted = self
            .submit(rule_set.clone(), rule.clone(), event, run, replay)
            .await;
        if submitted.is_err() {
            self.forget(&id);
        }
        submitted
    }

    /// Records a run that cannot resume as finished with `status` and why.
    async fn end_unresumed(
        &self,
        mut run: RunRecord,
        effects: Vec<EffectRecord>,
        status: RunStatus,
        error: String,
    ) -> Result<RunTicket, JournalError> {
        let (done, finished) = oneshot::channel();
        let ticket = RunTicket {
            run_id: run.id.clone(),
            rule: run.rule.clone().into(),
            finished,
        };
        tracing::warn!(run = %run.id, rule = %run.rule, status = status.as_str(), error = %error, "run not resumed");
        metrics::counter!("zoomwire_runs_total", "rule" => run.rule.clone(), "outcome" => status.as_str())
            .increment(1);
        run.status = status;
        run.error = Some(error);
        run.effects = effects;
        run.finished_at = Some(Utc::now());
        self.journal().record_run(&run).await?;
        self.announce(&run);
        let _ = done.send(run);
        Ok(ticket)
    }

    /// Stops accepting runs and waits for those in flight, at most `grace`.
    /// Returns whether everything finished in time.
    pub async fn shutdown(&self, grace: std::time::Duration) -> bool {
        self.inner.tracker.close();
        tokio::time::timeout(grace, self.inner.tracker.wait())
            .await
            .is_ok()
    }

    /// Whether this executor holds the run: admitted (running or waiting), or
    /// about to be, and not yet recorded finished.
    pub fn is_active(&self, run_id: &str) -> bool {
        self.inner.active.lock().contains(run_id)
    }

    /// Runs waiting their turn now, over every rule and key.
    pub fn waiting_runs(&self) -> usize {
        *self.inner.waiting.borrow()
    }

    /// Returns once fewer than `bound` runs wait their turn: intake calls it
    /// before taking more events, so that at the bound it stops reading
    /// instead of dropping anything.
    pub async fn wait_for_room(&self, bound: usize) {
        let mut waiting = self.inner.waiting.subscribe();
        let mut paused = false;
        // Cannot fail: the sender lives in `self`.
        let _ = waiting
            .wait_for(|&n| {
                if n >= bound && !paused {
                    paused = true;
                    tracing::warn!(
                        waiting = n,
                        bound,
                        "intake paused: too many runs waiting their turn"
                    );
                    metrics::counter!("zoomwire_intake_paused_total", "reason" => "runs_waiting")
                        .increment(1);
                }
                n < bound
            })
            .await;
        if paused {
            tracing::info!(bound, "intake resumed");
        }
    }

    /// Tells the subscribers of finished runs, if any ([`Executor::subscribe`]):
    /// the daemon has none, and a record is not cloned for nobody.
    fn announce(&self, record: &RunRecord) {
        if self.inner.finished.receiver_count() > 0 {
            let _ = self.inner.finished.send(record.clone());
        }
    }

    fn hold(&self, run_id: &str) {
        self.inner.active.lock().insert(run_id.to_string());
    }

    /// The run's last record is written (or never will be).
    fn forget(&self, run_id: &str) {
        self.inner.active.lock().remove(run_id);
    }

    /// Waits until no run is started or waiting (for tests and `replay`).
    pub async fn wait_idle(&self) {
        // Cannot fail: the sender lives in `self`. A waiting run always
        // waits behind a started one, so none started means none waiting.
        let _ = self.inner.started.subscribe().wait_for(|&n| n == 0).await;
    }

    /// Records a run and admits it (a resumed run).
    async fn submit(
        &self,
        rule_set: Arc<RuleSet>,
        rule: Arc<Rule>,
        event: Event,
        record: RunRecord,
        replay: Vec<EffectRecord>,
    ) -> Result<RunTicket, JournalError> {
        self.journal().record_run(&record).await?;
        let (pending, ticket) = pending_run(rule_set, rule, event, record, replay);
        for (run, reason) in self.admit_one(pending) {
            self.skip(run, reason).await;
        }
        Ok(ticket)
    }

    /// Starts the run, lets it wait, or returns it (with older waiting runs
    /// a `restart` replaced) to be recorded as skipped.
    fn admit_one(&self, run: PendingRun) -> Vec<(PendingRun, String)> {
        let slot_key = run.slot_key();
        let policy = Policy::of(&run.rule);
        let admission = {
            let mut slots = self.inner.slots.lock();
            let admission = slots.admit_parking(slot_key, policy, run, |run| self.park(run));
            self.publish_waiting(&slots);
            admission
        };
        let mut turned_away: Vec<_> = admission
            .replaced
            .into_iter()
            .map(|older| (older, REPLACED.to_string()))
            .collect();
        match admission.decision {
            Decision::Start(run, cancel) => self.start(run, cancel),
            Decision::Wait => {}
            Decision::Drop(run, reason) => turned_away.push((run, reason)),
        }
        turned_away
    }

    /// Shrinks a run that waits its turn to a small handle once the waiting
    /// runs keep as much of their events as the budget allows
    /// ([`super::held`]): its event, the bulk of it, stays in the journal
    /// when the journal keeps events, and is read back when the run starts
    /// ([`Executor::take_event`]). In a burst thousands of runs wait, so
    /// this is what bounds the daemon's memory.
    fn park(&self, mut run: PendingRun) -> PendingRun {
        if !self.journal().keeps_events() {
            return run;
        }
        run.hold = run
            .event
            .as_ref()
            .and_then(|event| self.inner.held_events.hold(held::cost(event)));
        if run.hold.is_none() {
            run.event = None;
        }
        run
    }

    /// The event of a run about to start: held, or read back from the
    /// journal for a parked run. `None`: the run cannot start and has been
    /// let go of (see [`Executor::read_back`]).
    async fn take_event(&self, mut run: PendingRun) -> Option<(PendingRun, Event)> {
        // No longer waiting: its share of the budget goes to the next ones.
        run.hold = None;
        if run.event.is_none() && run.commit.wait().await.is_err() {
            // Its event was never written: there is nothing to read back.
            self.forget(&run.record.id);
            return None;
        }
        match run.event.take() {
            Some(event) => Some((run, event)),
            None => self.read_back(run).await,
        }
    }

    /// Reads a parked run's event. If the journal cannot be read the run
    /// stays pending in the store and this executor lets go of it, so that
    /// the daemon's poll for unfinished runs resumes it (or the next start
    /// does); if its event is gone it is recorded dead, as on resume.
    async fn read_back(&self, run: PendingRun) -> Option<(PendingRun, Event)> {
        let id = run.record.id.clone();
        match self.journal().stored_event(&run.record.event_id).await {
            Ok(Some(event)) => return Some((run, event)),
            Ok(None) => {
                tracing::error!(run = %id, rule = %run.rule.name, event = %run.record.event_id, "the waiting run's event is no longer in the store");
                metrics::counter!("zoomwire_runs_total", "rule" => run.rule.name.to_string(), "outcome" => "dead").increment(1);
                let mut record = run.record;
                record.status = RunStatus::Dead;
                record.error = Some("its event is no longer in the store".into());
                record.finished_at = Some(Utc::now());
                if let Err(error) = self.journal().record_run(&record).await {
                    tracing::error!(run = %id, error = %error, "cannot record the run dead; it stays pending");
                }
                self.announce(&record);
                tell(run.done, record);
            }
            Err(error) => {
                tracing::warn!(run = %id, rule = %run.rule.name, error = %error, "cannot read the waiting run's event; it stays pending and resumes later");
            }
        }
        self.forget(&id);
        None
    }

    fn publish_waiting(&self, slots: &Slots<PendingRun>) {
        let now = slots.waiting();
        self.inner.waiting.send_if_modified(|waiting| {
            let changed = *waiting != now;
            *waiting = now;
            changed
        });
    }

    async fn skip(&self, run: PendingRun, reason: String) {
        tracing::warn!(rule = %run.rule.name, key = run.record.key.as_deref().unwrap_or_default(), run = %run.record.id, event = %run.record.event_id, reason = %reason, "run dropped");
        metrics::counter!("zoomwire_runs_total", "rule" => run.rule.name.to_string(), "outcome" => "skipped").increment(1);
        let mut record = run.record;
        record.status = RunStatus::Skipped;
        record.error = Some(reason);
        record.finished_at = Some(Utc::now());
        if let Err(error) = self.journal().record_run(&record).await {
            write_again(self.journal().as_ref(), &record, error).await;
        }
        self.forget(&record.id);
        self.announce(&record);
        tell(run.done, record);
    }

    fn start(&self, run: PendingRun, cancel: CancelFlag) {
        let executor = self.clone();
        self.inner.started.send_modify(|n| *n += 1);
        self.inner.tracker.spawn(async move {
            let slot_key = run.slot_key();
            let Some((run, event)) = executor.take_event(run).await else {
                for removed in executor.release(&slot_key, &cancel) {
                    executor.skip(removed, RULE_REMOVED.into()).await;
                }
                executor.inner.started.send_modify(|n| *n -= 1);
                return;
            };
            let run = match executor.cluster_turn(run, &cancel).await {
                Ok(run) => run,
                Err(run) => {
                    executor.skip(run, SINGLE_ELSEWHERE.into()).await;
                    for removed in executor.release(&slot_key, &cancel) {
                        executor.skip(removed, RULE_REMOVED.into()).await;
                    }
                    executor.inner.started.send_modify(|n| *n -= 1);
                    return;
                }
            };
            let PendingRun {
                rule_set,
                rule,
                record,
                replay,
                done,
                commit,
                ..
            } = run;
            let id = record.id.clone();
            let finished = executor
                .inner
                .runner
                .execute(Run {
                    rule_set: &rule_set,
                    rule: &rule,
                    event: &event,
                    record,
                    replay,
                    cancel: &cancel,
                    commit: &commit,
                })
                .await;
            // The script is over and its last record written or queued
            // ahead of whatever the next run writes: its place goes on now.
            let removed = executor.release(&slot_key, &cancel);
            match finished {
                Some(finished) => {
                    let record = finished.saved().await;
                    executor.forget(&record.id);
                    executor.announce(&record);
                    tell(done, record);
                }
                // Its event was never written, so neither is the run.
                None => executor.forget(&id),
            }
            for removed in removed {
                executor.skip(removed, RULE_REMOVED.into()).await;
            }
            executor.inner.started.send_modify(|n| *n -= 1);
        });
    }

    /// Waits until the journal says the run's key has a free place across
    /// the nodes sharing it (at once with one process): one for `single`,
    /// `queued` and `restart`, `max_runs` for `parallel`; `single` does not
    /// wait: the run comes back as `Err` to be dropped. A cancelled run
    /// (`restart`) stops waiting and is recorded as cancelled by its attempt.
    async fn cluster_turn(
        &self,
        run: PendingRun,
        cancel: &CancelFlag,
    ) -> Result<PendingRun, PendingRun> {
        let mode = run.rule.mode;
        let places = match mode {
            Mode::Parallel => run.rule.max_runs.max(1),
            Mode::Queued | Mode::Single | Mode::Restart => 1,
        };
        let mut failing = false;
        loop {
            if cancel.is_cancelled() {
                return Ok(run);
            }
            match self.journal().claim_start(&run.record, places).await {
                Ok(true) => return Ok(run),
                Ok(false) if mode == Mode::Single => return Err(run),
                Ok(false) => failing = false,
                Err(error) => {
                    if !failing {
                        tracing::warn!(run = %run.record.id, error = %error, "cannot ask the journal for the run's turn; asking again");
                    }
                    failing = true;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(CLUSTER_TURN_POLL) => {}
                _ = cancel.cancelled() => {}
            }
        }
    }

    /// Whether a reload removed this rule.
    fn rule_removed(&self, rule: &str) -> bool {
        self.inner
            .current_rules
            .get()
            .is_some_and(|rules| !rules.has_rule(rule))
    }

    /// A run ended: free its place and start the waiting runs whose turn
    /// came. Returns the waiting runs passed over because their rule was
    /// removed.
    fn release(&self, slot_key: &SlotKey, cancel: &CancelFlag) -> Vec<PendingRun> {
        let released = {
            let mut slots = self.inner.slots.lock();
            let released = slots.release(slot_key, cancel, |run| self.rule_removed(&run.rule.name));
            self.publish_waiting(&slots);
            released
        };
        for (run, cancel) in released.start {
            self.start(run, cancel);
        }
        released.removed
    }
}

/// Gives a run's last record to its ticket, if anyone holds one.
fn tell(done: Option<oneshot::Sender<RunRecord>>, record: RunRecord) {
    if let Some(done) = done {
        let _ = done.send(record);
    }
}

/// Puts the effects a crash left in doubt among the run's records, at their
/// positions, and returns them (logged and counted).
fn mark_in_doubt(
    run: &RunRecord,
    records: &mut Vec<EffectRecord>,
    in_doubt: Vec<EffectStart>,
) -> Vec<EffectRecord> {
    let marked: Vec<EffectRecord> = in_doubt
        .into_iter()
        .map(EffectStart::into_in_doubt_record)
        .collect();
    for record in &marked {
        tracing::warn!(run = %run.id, rule = %run.rule, effect = %record.name, seq = record.seq, "effect in doubt: the process stopped while it was being performed");
        metrics::counter!("zoomwire_effects_in_doubt_total", "effect" => record.name.clone())
            .increment(1);
        records.retain(|r| r.seq != record.seq);
        records.push(record.clone());
    }
    records.sort_by_key(|r| r.seq);
    marked
}

/// Why a run with this effect in doubt goes to the dead letters.
fn in_doubt_error(effect: &EffectRecord) -> String {
    format!(
        "effect #{seq} `{name}` is in doubt: zoomwire stopped while performing it, so it may or \
         may not have happened; the rule does not mark `{name}` idempotent, so the run stopped \
         rather than risk doing it twice (`zoomwire runs retry` performs it again)",
        seq = effect.seq,
        name = effect.name
    )
}

/// A run ready for admission, and the ticket its caller waits on.
fn pending_run(
    rule_set: Arc<RuleSet>,
    rule: Arc<Rule>,
    event: Event,
    record: RunRecord,
    replay: Vec<EffectRecord>,
) -> (PendingRun, RunTicket) {
    let (done, finished) = oneshot::channel();
    let ticket = RunTicket {
        run_id: record.id.clone(),
        rule: rule.name.clone(),
        finished,
    };
    let pending = PendingRun {
        rule_set,
        rule,
        event: Some(event),
        hold: None,
        record,
        replay,
        done: Some(done),
        commit: EventCommit::committed(),
    };
    (pending, ticket)
}

/// The skipped run recorded for a condition that failed to evaluate.
fn condition_failure_record(event: &Event, failure: &ConditionFailure) -> RunRecord {
    let mut record = new_record(&failure.rule, event, None);
    record.status = RunStatus::Skipped;
    let error = format!("condition error: {}", failure.error);
    record.error = Some(crate::effects::redact::redact_text(&error).into_owned());
    record.finished_at = Some(Utc::now());
    record
}

/// A new pending run of `rule` for `event`.
pub fn new_record(rule: &Rule, event: &Event, key: Option<String>) -> RunRecord {
    RunRecord {
        id: new_run_id(),
        rule: rule.name.to_string(),
        event_id: event.id.clone(),
        event_type: event.event_type.clone(),
        key,
        status: RunStatus::Pending,
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

/// Unique, time-ordered run ids: `r` + milliseconds + a counter + random bits.
fn new_run_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed) % 0x10000;
    format!(
        "r{:012x}{:04x}{:06x}",
        Utc::now().timestamp_millis(),
        count,
        fastrand::u32(..0x100_0000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effects::gateway::EffectObserver;
    use crate::effects::recorder::RecordingEffects;
    use crate::engine::journal::RunSaving;
    use crate::journal::memory::MemoryJournal;
    use crate::rules::compile::rules_of_yaml;
    use futures_util::future::BoxFuture;

    #[test]
    fn events_are_counted_per_type_on_a_kept_handle() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let counters = EventCounters::default();
        metrics::with_local_recorder(&recorder, || {
            counters.count("meeting.started");
            counters.count("meeting.ended");
            counters.count("meeting.started");
        });
        let text = handle.render();
        assert!(
            text.contains("zoomwire_events_total{type=\"meeting.started\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("zoomwire_events_total{type=\"meeting.ended\"} 1"),
            "{text}"
        );
        assert_eq!(counters.0.read().len(), 2, "one handle per type");
    }

    /// A memory journal that also lists the calls made to it; with `keeps`
    /// it also keeps the events it accepted for [`Journal::stored_event`]
    /// (unless `loses_events`), as the SQLite and PostgreSQL journals do.
    #[derive(Default)]
    struct CallLog {
        journal: Arc<MemoryJournal>,
        calls: Mutex<Vec<String>>,
        keeps: bool,
        loses_events: bool,
        events: Mutex<std::collections::HashMap<String, Event>>,
        /// With it, a run's last record is queued, and written once this
        /// hands out a permit (a commit that has not come yet).
        commits: Option<Arc<tokio::sync::Semaphore>>,
        /// When set, accepts are answered early and commit when it says
        /// (`true`), or fail (`false`), as the SQLite journal's may.
        held_commit: Mutex<Option<oneshot::Receiver<bool>>>,
        /// How many more writes of a finished run's record fail, as on a
        /// full disk.
        failing_ends: std::sync::atomic::AtomicUsize,
    }

    impl EffectObserver for CallLog {
        fn effect_starting(
            &self,
            run_id: &str,
            start: &crate::effects::gateway::EffectStart,
        ) -> Result<(), String> {
            self.journal.effect_starting(run_id, start)
        }

        fn effect_completed(&self, run_id: &str, record: &EffectRecord) {
            self.journal.effect_completed(run_id, record);
        }
    }

    impl Journal for CallLog {
        fn accept_event_with_runs<'a>(
            &'a self,
            event: &'a Event,
            runs: &'a [RunRecord],
        ) -> BoxFuture<'a, Result<bool, JournalError>> {
            let statuses: Vec<&str> = runs.iter().map(|r| r.status.as_str()).collect();
            self.calls
                .lock()
                .push(format!("accept {}", statuses.join(" ")));
            if self.keeps && !self.loses_events {
                self.events.lock().insert(event.id.clone(), event.clone());
            }
            self.journal.accept_event_with_runs(event, runs)
        }

        fn accept_events_early<'a>(
            &'a self,
            events: &'a [(&'a Event, &'a [RunRecord])],
        ) -> BoxFuture<'a, crate::engine::journal::EarlyAccepts> {
            let held = self.held_commit.lock().take().expect("a held commit");
            let (resolvers, commits): (Vec<_>, Vec<_>) =
                events.iter().map(|_| EventCommit::pending()).unzip();
            Box::pin(async move {
                let executed = self.accept_events_with_runs(events).await;
                let answers = executed.clone();
                let committed = Box::pin(async move {
                    let commits = held.await == Ok(true);
                    for resolver in resolvers {
                        resolver.resolve(if commits {
                            Ok(())
                        } else {
                            Err("the disk is full".into())
                        });
                    }
                    match commits {
                        true => answers,
                        false => answers
                            .iter()
                            .map(|_| Err(JournalError("the disk is full".into())))
                            .collect(),
                    }
                });
                crate::engine::journal::EarlyAccepts {
                    executed,
                    committed,
                    commits,
                }
            })
        }

        fn keeps_events(&self) -> bool {
            self.keeps
        }

        fn stored_event<'a>(
            &'a self,
            id: &'a str,
        ) -> BoxFuture<'a, Result<Option<Event>, JournalError>> {
            self.calls.lock().push("read event".into());
            Box::pin(async move { Ok(self.events.lock().get(id).cloned()) })
        }

        fn record_run<'a>(&'a self, run: &'a RunRecord) -> BoxFuture<'a, Result<(), JournalError>> {
            self.calls
                .lock()
                .push(format!("record {}", run.status.as_str()));
            let fails = run.status.is_finished()
                && self
                    .failing_ends
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok();
            if fails {
                return Box::pin(async { Err(JournalError("the disk is full".into())) });
            }
            self.journal.record_run(run)
        }

        fn queue_run(&self, run: &RunRecord) {
            self.calls
                .lock()
                .push(format!("record {}", run.status.as_str()));
            self.journal.queue_run(run)
        }

        fn queue_observed_run(&self, run: &RunRecord) -> Option<RunSaving> {
            let commits = self.commits.clone()?;
            self.calls
                .lock()
                .push(format!("queue {}", run.status.as_str()));
            let (journal, run) = (self.journal.clone(), run.clone());
            Some(Box::pin(async move {
                let _commit = commits.acquire().await.unwrap();
                journal.record_run(&run).await
            }))
        }

        fn unfinished_runs(&self) -> BoxFuture<'_, Result<Vec<UnfinishedRun>, JournalError>> {
            self.journal.unfinished_runs()
        }
    }

    /// Waits until `journal` was called `count` times.
    async fn calls_reach(journal: &CallLog, count: usize) {
        let reached = async {
            while journal.calls.lock().len() < count {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        };
        let waited = tokio::time::timeout(std::time::Duration::from_secs(10), reached).await;
        assert!(waited.is_ok(), "{:?}", journal.calls.lock());
    }

    fn setup(rules: &str) -> (Executor, Arc<CallLog>, Arc<RuleSet>, tempfile::TempDir) {
        setup_with(rules, CallLog::default())
    }

    fn setup_with(
        rules: &str,
        journal: CallLog,
    ) -> (Executor, Arc<CallLog>, Arc<RuleSet>, tempfile::TempDir) {
        let (rule_set, dir) = rules_of_yaml(rules);
        let rule_set = Arc::new(rule_set);
        let journal = Arc::new(journal);
        let executor = Executor::new(
            journal.clone(),
            Arc::new(RecordingEffects::default()),
            Arc::new(ScriptPool::new(2, 16 * 1024 * 1024)),
            Dynamic::from_map(rhai::Map::new()),
        );
        (executor, journal, rule_set, dir)
    }

    fn event(n: u32) -> Event {
        let body = serde_json::json!({"event": "a.b", "event_ts": n, "payload": {"n": n}});
        Event::from_value(&body, crate::event::Source::Test).unwrap()
    }

    const RULES: &str = "- name: runs\n  on: a.b\n  do: \"1\"\n\
                         - name: broken\n  on: a.b\n  when: 1 / 0 == 1\n  do: \"1\"\n";

    #[tokio::test]
    async fn matching_releases_the_tree_intake_kept() {
        let (executor, _journal, rule_set, _dir) = setup(RULES);
        let body = r#"{"event":"a.b","event_ts":1}"#;
        let event = Event::parse_for_matching(body, crate::event::Source::Test);
        let prepared = executor.prepare(&rule_set, event.unwrap());
        assert_eq!(prepared.rules.len(), 1, "matched on the kept tree");
        assert!(!prepared.event.tree_is_kept(), "runs keep only the text");
    }

    #[tokio::test]
    async fn an_event_is_journaled_with_its_runs_in_one_write_before_any_starts() {
        let (executor, journal, rule_set, _dir) = setup(RULES);
        let outcome = executor.handle_event(&rule_set, event(1)).await.unwrap();
        assert_eq!(outcome.condition_failures, 1);
        let record = outcome
            .runs
            .into_iter()
            .next()
            .unwrap()
            .wait()
            .await
            .unwrap();
        assert_eq!(record.status, RunStatus::Succeeded);
        let calls = journal.calls.lock().clone();
        assert_eq!(calls[0], "accept pending skipped", "{calls:?}");
        assert!(
            calls[1..].iter().all(|c| c.starts_with("record")),
            "{calls:?}"
        );
        let duplicate = executor.handle_event(&rule_set, event(1)).await.unwrap();
        assert!(duplicate.duplicate && duplicate.runs.is_empty());
        executor.wait_idle().await;
        assert!(executor.inner.active.lock().is_empty(), "nothing held");
    }

    #[tokio::test]
    async fn a_finished_run_hands_its_place_on_before_its_last_record_commits() {
        let commits = Arc::new(tokio::sync::Semaphore::new(0));
        let journal = CallLog {
            commits: Some(commits.clone()),
            ..CallLog::default()
        };
        let rules = "- name: one\n  on: a.b\n  max_runs: 1\n  do: \"1\"\n";
        let (executor, journal, rule_set, _dir) = setup_with(rules, journal);
        let mut first = executor.handle_event(&rule_set, event(1)).await.unwrap();
        let second = executor.handle_event(&rule_set, event(2)).await.unwrap();
        // accept, accept, running, queue, running (the second run), queue
        calls_reach(&journal, 6).await;
        let calls = journal.calls.lock().clone();
        assert_eq!(
            calls[2..],
            [
                "record running",
                "queue succeeded",
                "record running",
                "queue succeeded"
            ],
            "the second run started while the first's record waited for its commit"
        );
        // Told, forgotten and counted idle only once committed.
        let first = first.runs.remove(0);
        let id = first.run_id.clone();
        assert!(executor.is_active(&id));
        let idle = executor.wait_idle();
        tokio::pin!(idle);
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), &mut idle).await;
        assert!(waited.is_err(), "idle before the records are written");
        commits.add_permits(2);
        assert_eq!(first.wait().await.unwrap().status, RunStatus::Succeeded);
        let second = second.runs.into_iter().next().unwrap();
        assert_eq!(second.wait().await.unwrap().status, RunStatus::Succeeded);
        idle.await;
        assert!(!executor.is_active(&id));
        let stored = journal.journal.unfinished_runs().await.unwrap();
        assert!(stored.is_empty(), "both records written");
    }

    #[tokio::test]
    async fn a_run_whose_end_cannot_be_written_is_held_and_written_again_not_run_again() {
        let journal = CallLog {
            failing_ends: usize::MAX.into(),
            ..CallLog::default()
        };
        let rules = "- name: one\n  on: a.b\n  do: \"1\"\n";
        let (executor, journal, rule_set, _dir) = setup_with(rules, journal);
        let mut outcome = executor.handle_event(&rule_set, event(1)).await.unwrap();
        let run = outcome.runs.remove(0);
        let id = run.run_id.clone();
        // accept, running, then the end: written, and twice again after a wait.
        calls_reach(&journal, 5).await;
        assert!(
            executor.is_active(&id),
            "held: the poll for unfinished runs must not resume it"
        );
        let unfinished = journal.journal.unfinished_runs().await.unwrap();
        assert_eq!(unfinished.len(), 1, "the store still has it unfinished");
        journal.failing_ends.store(0, Ordering::Relaxed);
        let record = run.wait().await.unwrap();
        assert_eq!(record.status, RunStatus::Succeeded);
        executor.wait_idle().await;
        assert!(!executor.is_active(&id));
        assert!(journal.journal.unfinished_runs().await.unwrap().is_empty());
        let calls = journal.calls.lock().clone();
        assert_eq!(
            calls[..2],
            ["accept pending", "record running"],
            "{calls:?}"
        );
        assert!(
            calls[2..].iter().all(|c| c == "record succeeded"),
            "the end written again, the script not run again: {calls:?}"
        );
    }

    #[tokio::test]
    async fn a_dropped_run_whose_record_cannot_be_written_is_written_again() {
        let rules = "- name: one\n  on: a.b\n  mode: single\n  allow: [slack]\n  \
                     do: 'slack::post(\"#a\", \"hi\")'\n";
        let (rule_set, _dir) = rules_of_yaml(rules);
        let rule_set = Arc::new(rule_set);
        let journal = Arc::new(CallLog {
            failing_ends: 1.into(),
            ..CallLog::default()
        });
        let executor = Executor::new(
            journal.clone(),
            Arc::new(Posted {
                delay: std::time::Duration::from_millis(300),
                ..Posted::default()
            }),
            Arc::new(ScriptPool::new(2, 16 * 1024 * 1024)),
            Dynamic::from_map(rhai::Map::new()),
        );
        let mut first = executor.handle_event(&rule_set, event(1)).await.unwrap();
        // Dropped while the first runs; its record fails once, then is written.
        let mut second = executor.handle_event(&rule_set, event(2)).await.unwrap();
        let dropped = second.runs.remove(0);
        let id = dropped.run_id.clone();
        assert_eq!(dropped.wait().await.unwrap().status, RunStatus::Skipped);
        assert!(!executor.is_active(&id));
        let ran = first.runs.remove(0).wait().await.unwrap();
        assert_eq!(ran.status, RunStatus::Succeeded);
        assert!(journal.journal.unfinished_runs().await.unwrap().is_empty());
        let calls = journal.calls.lock().clone();
        let skipped = calls.iter().filter(|c| *c == "record skipped").count();
        assert_eq!(skipped, 2, "written again after the failure: {calls:?}");
    }

    /// Effects that note each Slack text they are asked to post, and answer
    /// after `delay`.
    #[derive(Default)]
    struct Posted {
        texts: Mutex<Vec<String>>,
        delay: std::time::Duration,
    }

    impl Effects for Posted {
        fn perform<'a>(
            &'a self,
            _context: &'a crate::effects::EffectContext,
            request: &'a crate::effects::EffectRequest,
        ) -> BoxFuture<'a, Result<serde_json::Value, crate::effects::EffectError>> {
            let text = request.args["text"].as_str().unwrap_or_default();
            self.texts.lock().push(text.to_string());
            Box::pin(async {
                if !self.delay.is_zero() {
                    tokio::time::sleep(self.delay).await;
                }
                Ok(serde_json::json!({"ok": true}))
            })
        }
    }

    /// A run of [`POSTS`] admitted once its event's statements ran, with a
    /// commit the test holds; ends once the commit succeeded (`commits`) or
    /// failed. Returns the run's final record, the posts made while the
    /// commit was held, those made in all, and the journal's calls.
    async fn a_run_before_its_commit(
        commits: bool,
    ) -> (Option<RunRecord>, Vec<String>, Vec<String>, Vec<String>) {
        let (executor, journal, rule_set, _dir) = setup(POSTS);
        let (executor, effects) = posting(&executor);
        let (commit, held) = oneshot::channel();
        *journal.held_commit.lock() = Some(held);
        let mut prepared = vec![executor.prepare(&rule_set, event(1))];
        let early = executor.accept_all_early(&mut prepared).await;
        assert!(early.all_fresh_early());
        let admitted = executor.admit(prepared.remove(0));
        let ticket = admitted.outcome.runs.into_iter().next().unwrap();
        // The run starts (its script reaches the first post) while the commit is held.
        let started = async {
            while !journal.calls.lock().iter().any(|c| c == "record running") {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), started)
            .await
            .expect("the run started before its event's commit");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let while_held = effects.texts.lock().clone();
        commit.send(commits).unwrap();
        let committed = early.committed().await;
        assert_eq!(committed[0].is_ok(), commits);
        let record = ticket.wait().await;
        executor.wait_idle().await;
        assert!(executor.inner.active.lock().is_empty(), "nothing held");
        let posted = effects.texts.lock().clone();
        let calls = journal.calls.lock().clone();
        (record, while_held, posted, calls)
    }

    #[tokio::test]
    async fn a_run_starts_before_its_events_commit_and_posts_only_after_it() {
        let (record, while_held, posted, _calls) = a_run_before_its_commit(true).await;
        assert!(
            while_held.is_empty(),
            "posted before the commit: {while_held:?}"
        );
        assert_eq!(posted, ["one", "two", "three"]);
        assert_eq!(record.unwrap().status, RunStatus::Succeeded);
    }

    #[tokio::test]
    async fn a_run_whose_events_commit_fails_stops_before_any_effect_and_is_not_recorded() {
        let (record, while_held, posted, calls) = a_run_before_its_commit(false).await;
        assert!(while_held.is_empty() && posted.is_empty(), "{posted:?}");
        assert!(record.is_none(), "no outcome: {record:?}");
        // Only the accept and the queued `running` (which the SQLite writer
        // refuses for a voided run, see `journal::writer`): no outcome.
        assert_eq!(calls, ["accept pending", "record running"]);
    }

    #[tokio::test]
    async fn a_duplicate_told_early_is_not_admitted_early() {
        let (executor, journal, rule_set, _dir) = setup(POSTS);
        let (commit, held) = oneshot::channel();
        *journal.held_commit.lock() = Some(held);
        let mut prepared = vec![
            executor.prepare(&rule_set, event(2)),
            executor.prepare(&rule_set, event(2)),
        ];
        let early = executor.accept_all_early(&mut prepared).await;
        assert!(matches!(early.executed[..], [Ok(true), Ok(false)]));
        assert!(!early.all_fresh_early(), "the batch waits for its commit");
        assert!(
            !prepared[1].commit.is_awaited(),
            "the duplicate has no runs to start"
        );
        commit.send(true).unwrap();
        let written = executor.settle(&prepared, early.committed().await);
        assert!(matches!(written[..], [Ok(true), Ok(false)]));
        let duplicate = &prepared[1].records[0].id;
        assert!(!executor.is_active(duplicate), "its run is let go of");
    }

    #[tokio::test]
    async fn a_waiting_run_whose_events_commit_failed_reads_nothing_back_and_is_let_go() {
        let rules = format!("{POSTS}mode: queued\n");
        let journal = CallLog {
            keeps: true,
            ..CallLog::default()
        };
        let (executor, journal, rule_set, _dir) = setup_with(&rules, journal);
        let (commit, held) = oneshot::channel();
        *journal.held_commit.lock() = Some(held);
        let mut prepared: Vec<PreparedEvent> = (1..=2)
            .map(|n| executor.prepare(&rule_set, event(n)))
            .collect();
        let early = executor.accept_all_early(&mut prepared).await;
        assert!(early.all_fresh_early());
        let tickets: Vec<RunTicket> = prepared
            .into_iter()
            .flat_map(|p| executor.admit(p).outcome.runs)
            .collect();
        assert_eq!(executor.waiting_runs(), 1, "the second waits its turn");
        commit.send(false).unwrap();
        assert!(early.committed().await.iter().all(Result::is_err));
        for ticket in tickets {
            assert!(ticket.wait().await.is_none(), "no outcome");
        }
        executor.wait_idle().await;
        assert!(executor.inner.active.lock().is_empty(), "nothing held");
        let calls = journal.calls.lock().clone();
        assert!(!calls.iter().any(|c| c == "read event"), "{calls:?}");
    }

    /// An executor on `executor`'s journal whose effects are [`Posted`].
    fn posting(executor: &Executor) -> (Executor, Arc<Posted>) {
        let effects = Arc::new(Posted::default());
        let executor = Executor::new(
            executor.journal().clone(),
            effects.clone(),
            Arc::new(ScriptPool::new(1, 16 * 1024 * 1024)),
            Dynamic::from_map(rhai::Map::new()),
        );
        (executor, effects)
    }

    /// A run of `rules` for `event(1)` resumed as a crash left it: its first
    /// post recorded, its second started and never recorded.
    async fn resume_with_a_post_in_doubt(rules: &str) -> (RunRecord, Vec<String>) {
        let (executor, _journal, rule_set, _dir) = setup(rules);
        let (executor, effects) = posting(&executor);
        let event = event(1);
        let mut run = new_record(rule_set.rule("posts").unwrap(), &event, None);
        run.status = RunStatus::Running;
        let post = |text: &str| serde_json::json!({"channel": "#a", "text": text});
        let mut first = EffectStart {
            seq: 1,
            name: "slack.post".into(),
            args: post("one"),
            started_at: Utc::now(),
        }
        .into_in_doubt_record();
        (first.result, first.in_doubt) = (Ok(serde_json::json!({"ok": true})), false);
        run.effects = vec![first];
        let in_doubt = vec![EffectStart {
            seq: 2,
            name: "slack.post".into(),
            args: post("two"),
            started_at: Utc::now(),
        }];
        let ticket = executor
            .resume(
                &rule_set,
                UnfinishedRun {
                    run,
                    event,
                    in_doubt,
                },
            )
            .await
            .unwrap();
        let record = ticket.wait().await.unwrap();
        executor.wait_idle().await;
        let performed = effects.texts.lock().clone();
        (record, performed)
    }

    const POSTS: &str = "name: posts\non: a.b\nallow: [slack]\ndo: |\n  slack::post(\"#a\", \"one\");\n  slack::post(\"#a\", \"two\");\n  slack::post(\"#a\", \"three\");\n";

    #[tokio::test]
    async fn a_resumed_run_with_an_effect_in_doubt_goes_to_the_dead_letters_naming_it() {
        let (record, performed) = resume_with_a_post_in_doubt(POSTS).await;
        assert_eq!(record.status, RunStatus::Dead);
        let error = record.error.unwrap();
        assert!(
            error.contains("effect #2 `slack.post` is in doubt"),
            "{error}"
        );
        assert!(performed.is_empty(), "nothing performed: {performed:?}");
        assert_eq!(record.effects.len(), 2);
        assert!(record.effects[1].in_doubt && record.effects[1].result.is_err());
    }

    #[tokio::test]
    async fn an_effect_the_rule_marks_idempotent_is_performed_again_and_marked() {
        let rules = format!("{POSTS}idempotent: [slack.post]\n");
        let (record, performed) = resume_with_a_post_in_doubt(&rules).await;
        assert_eq!(record.status, RunStatus::Succeeded, "{:?}", record.error);
        assert_eq!(performed, ["two", "three"], "the first is replayed");
        let doubts: Vec<bool> = record.effects.iter().map(|e| e.in_doubt).collect();
        assert_eq!(doubts, [false, true, false]);
    }

    #[tokio::test]
    async fn admission_follows_the_order_of_the_calls_not_of_the_journal_writes() {
        let rules = "name: q\non: a.b\nmode: queued\nmax_runs: 10\ndo: \"meta.id\"\n";
        let (executor, _journal, rule_set, _dir) = setup(rules);
        let prepared: Vec<PreparedEvent> = (1..=3)
            .map(|n| executor.prepare(&rule_set, event(n)))
            .collect();
        let ids: Vec<String> = prepared.iter().map(|p| p.event().id.clone()).collect();
        // Journaled last to first, admitted first to last.
        for p in prepared.iter().rev() {
            assert!(executor.accept(p).await.unwrap());
        }
        let mut tickets = Vec::new();
        for p in prepared {
            let admitted = executor.admit(p);
            tickets.extend(executor.record_turned_away(admitted).await.runs);
        }
        let held: Vec<String> = tickets.iter().map(|t| t.run_id.clone()).collect();
        assert!(
            held.iter().all(|id| executor.is_active(id)),
            "queued or running"
        );
        let mut finished = Vec::new();
        for ticket in tickets {
            finished.push(ticket.wait().await.unwrap());
        }
        executor.wait_idle().await;
        assert!(
            held.iter().all(|id| !executor.is_active(id)),
            "let go when finished"
        );
        let order: Vec<_> = finished.iter().map(|r| r.event_id.clone()).collect();
        assert_eq!(order, ids);
        assert!(
            finished
                .windows(2)
                .all(|w| w[0].finished_at <= w[1].started_at)
        );
    }

    const QUEUED: &str = "name: q\non: a.b\nmode: queued\ndo: \"event.payload.n\"\n";

    /// Three events of a `queued` rule admitted in a row (no await between,
    /// so nothing runs meanwhile): the first starts, the others wait,
    /// keeping their events within `budget` bytes ([`super::super::held`]).
    async fn three_queued(
        journal: CallLog,
        budget: usize,
    ) -> (Vec<RunRecord>, Arc<CallLog>, Executor) {
        let (executor, journal, rule_set, _dir) = setup_with(QUEUED, journal);
        let executor = executor.with_held_event_budget(budget);
        let prepared: Vec<PreparedEvent> = (1..=3)
            .map(|n| executor.prepare(&rule_set, event(n)))
            .collect();
        for p in &prepared {
            assert!(executor.accept(p).await.unwrap());
        }
        let admitted: Vec<Admitted> = prepared.into_iter().map(|p| executor.admit(p)).collect();
        assert_eq!(executor.waiting_runs(), 2);
        let mut tickets = Vec::new();
        for admitted in admitted {
            tickets.extend(executor.record_turned_away(admitted).await.runs);
        }
        let mut finished = Vec::new();
        for ticket in tickets {
            finished.push(ticket.wait().await.unwrap());
        }
        executor.wait_idle().await;
        (finished, journal, executor)
    }

    /// How many times the executor read an event back from the journal.
    fn reads_back(journal: &CallLog) -> usize {
        let calls = journal.calls.lock();
        calls.iter().filter(|c| *c == "read event").count()
    }

    #[tokio::test]
    async fn past_the_budget_a_waiting_run_holds_no_event_and_reads_it_back_to_start() {
        let keeps = CallLog {
            keeps: true,
            ..CallLog::default()
        };
        let (finished, journal, executor) = three_queued(keeps, 0).await;
        let outputs: Vec<_> = finished.iter().map(|r| r.output.clone()).collect();
        let expected: Vec<_> = (1..=3).map(|n| Some(serde_json::json!(n))).collect();
        assert_eq!(outputs, expected, "each run had its own event, in order");
        assert!(finished.iter().all(|r| r.status == RunStatus::Succeeded));
        assert_eq!(
            reads_back(&journal),
            2,
            "the two runs that waited read their event back"
        );
        assert!(executor.inner.active.lock().is_empty(), "nothing held");

        let (finished, journal, _executor) = three_queued(CallLog::default(), 0).await;
        assert!(finished.iter().all(|r| r.status == RunStatus::Succeeded));
        assert!(
            !journal.calls.lock().iter().any(|c| c == "read event"),
            "a journal that does not keep events leaves them with the runs"
        );
    }

    #[tokio::test]
    async fn waiting_runs_keep_their_events_within_the_budget_and_read_back_the_rest() {
        let keeps = || CallLog {
            keeps: true,
            ..CallLog::default()
        };
        // Room for one waiting run's event: the second run keeps it, the
        // third reads its own back.
        let (finished, journal, executor) = three_queued(keeps(), event(2).raw.len()).await;
        let outputs: Vec<_> = finished.iter().map(|r| r.output.clone()).collect();
        let expected: Vec<_> = (1..=3).map(|n| Some(serde_json::json!(n))).collect();
        assert_eq!(outputs, expected, "each run had its own event, in order");
        assert_eq!(reads_back(&journal), 1);
        assert_eq!(
            executor.inner.held_events.taken(),
            0,
            "the budget is whole again"
        );

        let (finished, journal, executor) =
            three_queued(keeps(), super::super::held::DEFAULT_BUDGET).await;
        assert!(finished.iter().all(|r| r.status == RunStatus::Succeeded));
        assert_eq!(reads_back(&journal), 0, "the default budget keeps both");
        assert_eq!(executor.inner.held_events.taken(), 0);
    }

    #[tokio::test]
    async fn a_waiting_run_whose_event_is_gone_is_recorded_dead_not_dropped() {
        let loses = CallLog {
            keeps: true,
            loses_events: true,
            ..CallLog::default()
        };
        let (finished, journal, executor) = three_queued(loses, 0).await;
        let statuses: Vec<_> = finished.iter().map(|r| r.status).collect();
        assert_eq!(
            statuses,
            [RunStatus::Succeeded, RunStatus::Dead, RunStatus::Dead],
            "the first started with its event in hand"
        );
        assert_eq!(
            finished[1].error.as_deref(),
            Some("its event is no longer in the store")
        );
        let recorded_dead = journal
            .calls
            .lock()
            .iter()
            .filter(|c| *c == "record dead")
            .count();
        assert_eq!(recorded_dead, 2);
        assert!(executor.inner.active.lock().is_empty(), "nothing held");
    }

    #[tokio::test]
    async fn untracked_runs_have_no_ticket_and_still_run_and_are_recorded() {
        let (executor, journal, rule_set, _dir) = setup(QUEUED);
        let prepared: Vec<PreparedEvent> = (1..=3)
            .map(|n| executor.prepare(&rule_set, event(n)))
            .collect();
        for p in &prepared {
            assert!(executor.accept(p).await.unwrap());
        }
        for p in prepared {
            let admitted = executor.admit_untracked(p);
            let outcome = executor.record_turned_away(admitted).await;
            assert!(outcome.runs.is_empty(), "no ticket");
        }
        executor.wait_idle().await;
        let succeeded = journal
            .calls
            .lock()
            .iter()
            .filter(|c| *c == "record succeeded")
            .count();
        assert_eq!(succeeded, 3);
        assert!(executor.inner.active.lock().is_empty(), "nothing held");
    }
}
