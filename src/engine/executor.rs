//! The executor: turns each (event, rule) match into a run and drives it
//! under the rule's mode, timeout and retry policy.
//!
//! Every step is reported to the [`Journal`] (the event together with its
//! runs, pending, before any starts; running; each effect; the outcome),
//! which is the seam where durability fits. Handling an event is split in
//! [`Executor::prepare`] (match, no I/O), [`Executor::accept`] (one journal
//! write) and [`Executor::admit`] (no I/O), so that the daemon can journal
//! many events at once and still admit their runs in arrival order.
//!
//! Modes apply per rule and per concurrency key: `single` drops a run while
//! one is running, `queued` runs one at a time with up to `max_runs` waiting
//! or running, `parallel` runs up to `max_runs` at once, `restart` cancels
//! the running one for the newest. Scripts run on the sandbox's thread pool;
//! this module only awaits them. The executor knows which runs it holds
//! ([`Executor::is_active`]), so that the daemon can tell a run put back in
//! the store by `zoomwire runs retry` from one it is running.
//!
//! A queued run is checked when it leaves the queue: if a reload removed its
//! rule ([`Executor::with_current_rules`]), it is dropped as skipped with a
//! record saying so. Runs that already started finish with the rule they have.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use chrono::Utc;
use rhai::Dynamic;
use tokio::sync::{broadcast, oneshot};
use tokio_util::task::TaskTracker;

use super::matcher::{ConditionFailure, Matched, match_event};
use super::record::{Journal, JournalError, RunRecord, RunStatus, UnfinishedRun};
use crate::effects::gateway::{EffectRecord, RunEffects};
use crate::effects::{EffectContext, Effects};
use crate::event::Event;
use crate::rules::{Mode, Rule, RuleSet};
use crate::script::{ScriptError, ScriptJob, ScriptPool};

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
    /// Runs to start, in rule order.
    runs: Vec<(Arc<Rule>, RunRecord)>,
    /// Skipped records of rules whose condition failed, with the rule's name.
    failures: Vec<(RunRecord, Arc<str>)>,
}

impl PreparedEvent {
    pub fn event(&self) -> &Event {
        &self.event
    }
}

/// The runs of one event after admission; those a mode turned away still
/// need their skipped record ([`Executor::record_turned_away`]).
pub struct Admitted {
    outcome: EventOutcome,
    turned_away: Vec<(PendingRun, String)>,
}

/// Why a queued run of a removed rule was dropped.
pub const RULE_REMOVED: &str = "its rule was removed by a reload";

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
    journal: Arc<dyn Journal>,
    effects: Arc<dyn Effects>,
    pool: Arc<ScriptPool>,
    vars: Dynamic,
    slots: Mutex<HashMap<SlotKey, Slot>>,
    /// Ids of the runs this executor holds: recorded or about to be, and not
    /// yet recorded finished. A run the journal lists as unfinished that is
    /// not here was put back by `zoomwire runs retry`.
    active: Mutex<HashSet<String>>,
    finished: broadcast::Sender<RunRecord>,
    tracker: TaskTracker,
    /// Retries without waiting (rule tests): the backoff is the rule's business, not the test's.
    instant_retries: bool,
    /// Asked before a queued run starts; none: queued runs always start.
    current_rules: OnceLock<Arc<dyn RuleNames>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SlotKey {
    rule: Arc<str>,
    key: Option<String>,
}

/// Runs of one rule and key.
#[derive(Default)]
struct Slot {
    running: Vec<Arc<AtomicBool>>,
    queue: VecDeque<PendingRun>,
}

/// Everything needed to start a run later.
struct PendingRun {
    rule_set: Arc<RuleSet>,
    rule: Arc<Rule>,
    event: Event,
    record: RunRecord,
    replay: Vec<EffectRecord>,
    done: oneshot::Sender<RunRecord>,
}

/// What admission decided.
enum Admission {
    Start(PendingRun, Arc<AtomicBool>),
    Queued,
    Skip(PendingRun, String),
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
                journal,
                effects,
                pool,
                vars,
                slots: Mutex::default(),
                active: Mutex::default(),
                finished,
                tracker: TaskTracker::new(),
                instant_retries: false,
                current_rules: OnceLock::new(),
            }),
        }
    }

    /// Retries failed runs at once instead of after the rule's backoff (for rule tests).
    pub fn with_instant_retries(mut self) -> Executor {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.instant_retries = true;
        }
        self
    }

    /// Drops queued runs whose rule `rules` no longer has when their turn comes
    /// (set once; later calls are ignored).
    pub fn with_current_rules(self, rules: Arc<dyn RuleNames>) -> Executor {
        let _ = self.inner.current_rules.set(rules);
        self
    }

    /// Finished runs as they happen (for the demo and the admin API).
    pub fn subscribe(&self) -> broadcast::Receiver<RunRecord> {
        self.inner.finished.subscribe()
    }

    pub fn journal(&self) -> &Arc<dyn Journal> {
        &self.inner.journal
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
        self.record_turned_away(admitted).await
    }

    /// Matches an event and builds the records of its runs (pending, or
    /// skipped for a condition that failed). No I/O: nothing is written yet.
    pub fn prepare(&self, rule_set: &Arc<RuleSet>, event: Event) -> PreparedEvent {
        let matched = match_event(rule_set, &event, &self.inner.vars);
        let runs = matched
            .matched
            .into_iter()
            .map(|Matched { rule, key }| {
                let record = new_record(&rule, &event, key);
                self.hold(&record.id);
                (rule, record)
            })
            .collect();
        let failures = matched
            .failures
            .iter()
            .map(|failure| condition_failure_record(&event, failure))
            .collect();
        PreparedEvent {
            rule_set: rule_set.clone(),
            event,
            runs,
            failures,
        }
    }

    /// Writes the event and the records of its runs to the journal, in one
    /// commit. `Ok(false)`: a duplicate, which must not run.
    pub async fn accept(&self, prepared: &PreparedEvent) -> Result<bool, JournalError> {
        let records: Vec<RunRecord> = prepared
            .runs
            .iter()
            .map(|(_, record)| record.clone())
            .chain(prepared.failures.iter().map(|(record, _)| record.clone()))
            .collect();
        let written = self
            .inner
            .journal
            .accept_event_with_runs(&prepared.event, &records)
            .await;
        if !matches!(written, Ok(true)) {
            // Not written: these runs will never be.
            prepared.runs.iter().for_each(|(_, r)| self.forget(&r.id));
        }
        let fresh = written?;
        if fresh {
            metrics::counter!("zoomwire_events_total", "type" => prepared.event.event_type.clone())
                .increment(1);
        }
        Ok(fresh)
    }

    /// Starts or queues the runs of an accepted event under their rules'
    /// modes. No I/O, so that a caller can admit events strictly in the order
    /// they arrived; the runs a mode turned away are recorded by
    /// [`Executor::record_turned_away`].
    pub fn admit(&self, prepared: PreparedEvent) -> Admitted {
        let PreparedEvent {
            rule_set,
            event,
            runs,
            failures,
        } = prepared;
        for (record, rule) in &failures {
            tracing::warn!(rule = %rule, event = %event.id, error = %record.error.as_deref().unwrap_or_default(), "condition failed");
            metrics::counter!("zoomwire_condition_errors_total", "rule" => rule.to_string())
                .increment(1);
        }
        let mut tickets = Vec::with_capacity(runs.len());
        let mut turned_away = Vec::new();
        for (rule, record) in runs {
            let (pending, ticket) =
                pending_run(rule_set.clone(), rule, event.clone(), record, Vec::new());
            tickets.push(ticket);
            match self.admit_one(pending) {
                Admission::Start(run, cancel) => self.start(run, cancel),
                Admission::Queued => {}
                Admission::Skip(run, reason) => turned_away.push((run, reason)),
            }
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

    /// Records the runs a mode turned away as skipped; returns the event's outcome.
    pub async fn record_turned_away(
        &self,
        admitted: Admitted,
    ) -> Result<EventOutcome, JournalError> {
        for (run, reason) in admitted.turned_away {
            self.skip(run, reason).await?;
        }
        Ok(admitted.outcome)
    }

    /// Resumes a run left unfinished by a crash, replaying its recorded effects.
    pub async fn resume(
        &self,
        rule_set: &Arc<RuleSet>,
        unfinished: UnfinishedRun,
    ) -> Result<RunTicket, JournalError> {
        let UnfinishedRun { mut run, event } = unfinished;
        let replay = std::mem::take(&mut run.effects);
        if run.status == RunStatus::Failed {
            // The crash came while waiting to retry: that attempt is over.
            run.attempt += 1;
        }
        run.status = RunStatus::Pending;
        match rule_set.rule(&run.rule) {
            Some(rule) => {
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
            None => {
                let (done, finished) = oneshot::channel();
                let ticket = RunTicket {
                    run_id: run.id.clone(),
                    rule: run.rule.clone().into(),
                    finished,
                };
                run.status = RunStatus::Skipped;
                run.error = Some("its rule no longer exists".into());
                run.finished_at = Some(Utc::now());
                self.inner.journal.record_run(&run).await?;
                let _ = done.send(run);
                Ok(ticket)
            }
        }
    }

    /// Stops accepting runs and waits for those in flight, at most `grace`.
    /// Returns whether everything finished in time.
    pub async fn shutdown(&self, grace: std::time::Duration) -> bool {
        self.inner.tracker.close();
        tokio::time::timeout(grace, self.inner.tracker.wait())
            .await
            .is_ok()
    }

    /// Whether this executor holds the run: admitted (running or queued), or
    /// about to be, and not yet recorded finished.
    pub fn is_active(&self, run_id: &str) -> bool {
        lock(&self.inner.active).contains(run_id)
    }

    fn hold(&self, run_id: &str) {
        lock(&self.inner.active).insert(run_id.to_string());
    }

    /// The run's last record is written (or never will be).
    fn forget(&self, run_id: &str) {
        lock(&self.inner.active).remove(run_id);
    }

    /// Waits until no run is in flight (for tests and `replay`).
    pub async fn wait_idle(&self) {
        while !self.inner.tracker.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
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
        self.inner.journal.record_run(&record).await?;
        let (pending, ticket) = pending_run(rule_set, rule, event, record, replay);
        match self.admit_one(pending) {
            Admission::Start(run, cancel) => self.start(run, cancel),
            Admission::Queued => {}
            Admission::Skip(run, reason) => self.skip(run, reason).await?,
        }
        Ok(ticket)
    }

    fn admit_one(&self, run: PendingRun) -> Admission {
        let rule = run.rule.clone();
        let slot_key = SlotKey {
            rule: rule.name.clone(),
            key: run.record.key.clone(),
        };
        let mut slots = lock(&self.inner.slots);
        let slot = slots.entry(slot_key).or_default();
        let max = rule.max_runs as usize;
        let running = slot.running.len();
        match rule.mode {
            Mode::Parallel if running < max => start_in(slot, run),
            Mode::Parallel => Admission::Skip(
                run,
                format!("{max} runs already in flight (mode parallel, max_runs {max})"),
            ),
            Mode::Single if running == 0 => start_in(slot, run),
            Mode::Single => Admission::Skip(run, "a run is already in flight (mode single)".into()),
            Mode::Queued if running == 0 => start_in(slot, run),
            Mode::Queued if running + slot.queue.len() < max => {
                slot.queue.push_back(run);
                Admission::Queued
            }
            Mode::Queued => {
                Admission::Skip(run, format!("queue full (mode queued, max_runs {max})"))
            }
            Mode::Restart if running == 0 => start_in(slot, run),
            Mode::Restart => {
                for cancel in &slot.running {
                    cancel.store(true, Ordering::Relaxed);
                }
                let replaced: Vec<PendingRun> = slot.queue.drain(..).collect();
                slot.queue.push_back(run);
                drop(slots);
                for old in replaced {
                    let executor = self.clone();
                    tokio::spawn(async move {
                        let _ = executor
                            .skip(old, "replaced by a newer run (mode restart)".into())
                            .await;
                    });
                }
                Admission::Queued
            }
        }
    }

    async fn skip(&self, run: PendingRun, reason: String) -> Result<(), JournalError> {
        tracing::info!(rule = %run.rule.name, run = %run.record.id, reason = %reason, "run skipped");
        metrics::counter!("zoomwire_runs_total", "rule" => run.rule.name.to_string(), "outcome" => "skipped").increment(1);
        let mut record = run.record;
        record.status = RunStatus::Skipped;
        record.error = Some(reason);
        record.finished_at = Some(Utc::now());
        let written = self.inner.journal.record_run(&record).await;
        self.forget(&record.id);
        written?;
        let _ = self.inner.finished.send(record.clone());
        let _ = run.done.send(record);
        Ok(())
    }

    fn start(&self, run: PendingRun, cancel: Arc<AtomicBool>) {
        let executor = self.clone();
        self.inner.tracker.spawn(async move {
            let slot_key = SlotKey {
                rule: run.rule.name.clone(),
                key: run.record.key.clone(),
            };
            let done = run.done;
            let record = execute(
                &executor.inner,
                &run.rule_set,
                &run.rule,
                &run.event,
                run.record,
                run.replay,
                &cancel,
            )
            .await;
            executor.forget(&record.id);
            let _ = executor.inner.finished.send(record.clone());
            let _ = done.send(record);
            for removed in executor.release(slot_key, &cancel) {
                let _ = executor.skip(removed, RULE_REMOVED.into()).await;
            }
        });
    }

    /// Whether a reload removed this rule.
    fn rule_removed(&self, rule: &str) -> bool {
        self.inner
            .current_rules
            .get()
            .is_some_and(|rules| !rules.has_rule(rule))
    }

    /// A run ended: free its place and start the next queued one. Returns
    /// the queued runs passed over because their rule was removed.
    fn release(&self, slot_key: SlotKey, cancel: &Arc<AtomicBool>) -> Vec<PendingRun> {
        let mut removed = Vec::new();
        let next = {
            let mut slots = lock(&self.inner.slots);
            let Some(slot) = slots.get_mut(&slot_key) else {
                return removed;
            };
            slot.running.retain(|c| !Arc::ptr_eq(c, cancel));
            let mut next = None;
            while slot.running.is_empty()
                && let Some(run) = slot.queue.pop_front()
            {
                if self.rule_removed(&run.rule.name) {
                    removed.push(run);
                } else {
                    next = Some(start_in(slot, run));
                }
            }
            if slot.running.is_empty() && slot.queue.is_empty() {
                slots.remove(&slot_key);
            }
            next
        };
        if let Some(Admission::Start(run, cancel)) = next {
            self.start(run, cancel);
        }
        removed
    }
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
        event,
        record,
        replay,
        done,
    };
    (pending, ticket)
}

/// The skipped run recorded for a condition that failed to evaluate.
fn condition_failure_record(event: &Event, failure: &ConditionFailure) -> (RunRecord, Arc<str>) {
    let mut record = new_record(&failure.rule, event, None);
    record.status = RunStatus::Skipped;
    record.error = Some(format!("condition error: {}", failure.error));
    record.finished_at = Some(Utc::now());
    (record, failure.rule.name.clone())
}

fn start_in(slot: &mut Slot, run: PendingRun) -> Admission {
    let cancel = Arc::new(AtomicBool::new(false));
    slot.running.push(cancel.clone());
    Admission::Start(run, cancel)
}

/// Runs the attempts of one run and returns its final record.
async fn execute(
    inner: &Inner,
    rule_set: &Arc<RuleSet>,
    rule: &Arc<Rule>,
    event: &Event,
    mut record: RunRecord,
    mut replay: Vec<EffectRecord>,
    cancel: &Arc<AtomicBool>,
) -> RunRecord {
    let first_attempt = record.attempt.max(1);
    let started = Instant::now();
    for attempt in first_attempt.. {
        record.attempt = attempt;
        record.status = RunStatus::Running;
        record.started_at.get_or_insert_with(Utc::now);
        record.error = None;
        // Not waited for: written before the effects the attempt records.
        inner.journal.queue_run(&record);
        let (result, effects) =
            run_attempt(inner, rule_set, rule, event, &record, replay, cancel).await;
        record.effects = effects.records();
        record.logs = effects.logs();
        match result {
            Ok(output) => {
                record.status = RunStatus::Succeeded;
                record.output = rhai::serde::from_dynamic::<serde_json::Value>(&output)
                    .ok()
                    .filter(|v| !v.is_null());
                break;
            }
            Err(ScriptError::Cancelled) => {
                record.status = RunStatus::Skipped;
                record.error = Some("cancelled: a newer run replaced it (mode restart)".into());
                break;
            }
            Err(error) => {
                record.error = Some(describe_error(rule, &error));
                let retryable = is_retryable(&error, &effects) && !cancel.load(Ordering::Relaxed);
                if retryable && attempt < rule.retry.attempts {
                    record.status = RunStatus::Failed;
                    persist(inner, &record).await;
                    let delay = if inner.instant_retries {
                        std::time::Duration::ZERO
                    } else {
                        rule.retry.delay_before(attempt + 1)
                    };
                    tracing::warn!(rule = %rule.name, run = %record.id, attempt, error = %record.error.as_deref().unwrap_or_default(), delay_ms = delay.as_millis() as u64, "run failed, retrying");
                    tokio::time::sleep(delay).await;
                    replay = record.effects.clone();
                    continue;
                }
                // Dead: a transient failure that outlasted every retry the rule allows.
                record.status = if retryable && rule.retry.attempts > 1 {
                    RunStatus::Dead
                } else {
                    RunStatus::Failed
                };
                break;
            }
        }
    }
    record.finished_at = Some(Utc::now());
    persist(inner, &record).await;
    log_outcome(rule, &record, started);
    record
}

async fn run_attempt(
    inner: &Inner,
    rule_set: &Arc<RuleSet>,
    rule: &Arc<Rule>,
    event: &Event,
    record: &RunRecord,
    replay: Vec<EffectRecord>,
    cancel: &Arc<AtomicBool>,
) -> (Result<Dynamic, ScriptError>, Arc<RunEffects>) {
    let deadline = Instant::now() + rule.timeout;
    let context = EffectContext {
        rule: rule.name.clone(),
        run_id: record.id.as_str().into(),
        deadline,
        http_hosts: rule.capabilities.http_hosts(),
        download_token: event
            .download_token()
            .map(|t| Arc::new(secrecy::SecretString::from(t))),
    };
    let observer: Arc<dyn crate::effects::gateway::EffectObserver> = inner.journal.clone();
    let effects = Arc::new(
        RunEffects::new(
            context,
            rule.capabilities.clone(),
            inner.effects.clone(),
            tokio::runtime::Handle::current(),
        )
        .with_replay(replay)
        .with_observer(observer)
        .with_output_limits(rule_set.sandbox().limits().output_limits()),
    );
    let job = ScriptJob {
        sandbox: rule_set.sandbox().clone(),
        ast: rule.action.ast.clone(),
        event: event.body().clone(),
        meta: run_meta(event, record),
        vars: inner.vars.clone(),
        effects: effects.clone(),
        deadline,
        cancel: cancel.clone(),
    };
    (inner.pool.run(job).await, effects)
}

/// `meta` as a script sees it: the event's envelope plus the run's identity.
fn run_meta(event: &Event, record: &RunRecord) -> Dynamic {
    let mut meta = event.meta();
    if let Some(mut map) = meta.write_lock::<rhai::Map>() {
        map.insert("rule".into(), record.rule.clone().into());
        map.insert("run_id".into(), record.id.clone().into());
        map.insert("attempt".into(), (record.attempt as rhai::INT).into());
    }
    meta
}

/// Whether the failure came from an effect that may succeed next time.
fn is_retryable(error: &ScriptError, effects: &RunEffects) -> bool {
    match error {
        ScriptError::Effect(effect_error) => effect_error.is_transient(),
        ScriptError::Runtime { .. } | ScriptError::Timeout { .. } => {
            effects.had_transient_failure()
        }
        ScriptError::Limit { .. } | ScriptError::Cancelled => false,
    }
}

/// The error as a user reads it, with the script position moved into the file.
fn describe_error(rule: &Rule, error: &ScriptError) -> String {
    match error {
        ScriptError::Runtime {
            message,
            line: Some(line),
            column,
        } => {
            let at = rule.action.origin.locate(*line, column.unwrap_or(1));
            format!(
                "{}:{}:{}: {message}",
                rule.action.origin.path.display(),
                at.line,
                at.column
            )
        }
        other => other.to_string(),
    }
}

async fn persist(inner: &Inner, record: &RunRecord) {
    if let Err(error) = inner.journal.record_run(record).await {
        tracing::error!(run = %record.id, error = %error, "could not record run");
    }
}

fn log_outcome(rule: &Rule, record: &RunRecord, started: Instant) {
    let outcome = record.status.as_str();
    metrics::counter!("zoomwire_runs_total", "rule" => rule.name.to_string(), "outcome" => outcome)
        .increment(1);
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match &record.error {
        None => {
            tracing::info!(rule = %rule.name, run = %record.id, outcome, elapsed_ms, effects = record.effects.len(), "run finished")
        }
        Some(error) => {
            tracing::warn!(rule = %rule.name, run = %record.id, outcome, elapsed_ms, error = %error, "run finished")
        }
    }
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Poisoning only follows a panic in another holder; the map is still consistent.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effects::BoxFuture;
    use crate::effects::gateway::EffectObserver;
    use crate::effects::recorder::RecordingEffects;
    use crate::engine::record::MemoryJournal;
    use crate::rules::RuleSources;
    use crate::rules::compile::load_rule_set;
    use crate::script::SandboxLimits;

    /// A memory journal that also lists the calls made to it.
    #[derive(Default)]
    struct CallLog {
        journal: MemoryJournal,
        calls: Mutex<Vec<String>>,
    }

    impl EffectObserver for CallLog {
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
            lock(&self.calls).push(format!("accept {}", statuses.join(" ")));
            self.journal.accept_event_with_runs(event, runs)
        }

        fn record_run<'a>(&'a self, run: &'a RunRecord) -> BoxFuture<'a, Result<(), JournalError>> {
            lock(&self.calls).push(format!("record {}", run.status.as_str()));
            self.journal.record_run(run)
        }

        fn queue_run(&self, run: &RunRecord) {
            lock(&self.calls).push(format!("record {}", run.status.as_str()));
            self.journal.queue_run(run)
        }

        fn unfinished_runs(&self) -> BoxFuture<'_, Result<Vec<UnfinishedRun>, JournalError>> {
            self.journal.unfinished_runs()
        }
    }

    fn setup(rules: &str) -> (Executor, Arc<CallLog>, Arc<RuleSet>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.yaml"), rules).unwrap();
        let sources = RuleSources {
            paths: vec![dir.path().join("rules.yaml")],
            scripts_dir: dir.path().join("scripts"),
        };
        let rule_set = Arc::new(load_rule_set(&sources, &SandboxLimits::default()).unwrap());
        let journal = Arc::new(CallLog::default());
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
        let calls = lock(&journal.calls).clone();
        assert_eq!(calls[0], "accept pending skipped", "{calls:?}");
        assert!(
            calls[1..].iter().all(|c| c.starts_with("record")),
            "{calls:?}"
        );
        let duplicate = executor.handle_event(&rule_set, event(1)).await.unwrap();
        assert!(duplicate.duplicate && duplicate.runs.is_empty());
        executor.wait_idle().await;
        assert!(lock(&executor.inner.active).is_empty(), "nothing held");
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
            tickets.extend(executor.record_turned_away(admitted).await.unwrap().runs);
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
}
