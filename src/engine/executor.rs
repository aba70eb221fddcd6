//! The executor: turns each (event, rule) match into a run and drives it
//! under the rule's mode, timeout and retry policy.
//!
//! Every step is reported to the [`Journal`] (pending before it starts,
//! running, each effect, the outcome), which is the seam where durability
//! fits. Modes apply per rule and per concurrency key: `single` drops a run
//! while one is running, `queued` runs one at a time with up to `max_runs`
//! waiting or running, `parallel` runs up to `max_runs` at once, `restart`
//! cancels the running one for the newest. Scripts run on the sandbox's
//! thread pool; this module only awaits them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    finished: broadcast::Sender<RunRecord>,
    tracker: TaskTracker,
    /// Retries without waiting (rule tests): the backoff is the rule's business, not the test's.
    instant_retries: bool,
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
                finished,
                tracker: TaskTracker::new(),
                instant_retries: false,
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

    /// Finished runs as they happen (for the demo and the admin API).
    pub fn subscribe(&self) -> broadcast::Receiver<RunRecord> {
        self.inner.finished.subscribe()
    }

    pub fn journal(&self) -> &Arc<dyn Journal> {
        &self.inner.journal
    }

    /// Accepts an event into the journal, matches it and starts its runs.
    pub async fn handle_event(
        &self,
        rule_set: &Arc<RuleSet>,
        event: Event,
    ) -> Result<EventOutcome, JournalError> {
        if !self.inner.journal.accept_event(&event).await? {
            metrics::counter!("zoomwire_events_duplicate_total").increment(1);
            return Ok(EventOutcome {
                duplicate: true,
                runs: Vec::new(),
                condition_failures: 0,
            });
        }
        metrics::counter!("zoomwire_events_total", "type" => event.event_type.clone()).increment(1);
        let matched = match_event(rule_set, &event, &self.inner.vars);
        for failure in &matched.failures {
            self.record_condition_failure(&event, failure).await?;
        }
        let mut runs = Vec::with_capacity(matched.matched.len());
        for Matched { rule, key } in matched.matched {
            let record = new_record(&rule, &event, key);
            runs.push(
                self.submit(rule_set.clone(), rule, event.clone(), record, Vec::new())
                    .await?,
            );
        }
        Ok(EventOutcome {
            duplicate: false,
            runs,
            condition_failures: matched.failures.len(),
        })
    }

    /// Resumes a run left unfinished by a crash, replaying its recorded effects.
    pub async fn resume(
        &self,
        rule_set: &Arc<RuleSet>,
        unfinished: UnfinishedRun,
    ) -> Result<RunTicket, JournalError> {
        let UnfinishedRun { mut run, event } = unfinished;
        let replay = std::mem::take(&mut run.effects);
        run.status = RunStatus::Pending;
        match rule_set.rule(&run.rule) {
            Some(rule) => {
                self.submit(rule_set.clone(), rule.clone(), event, run, replay)
                    .await
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

    /// Waits until no run is in flight (for tests and `replay`).
    pub async fn wait_idle(&self) {
        while !self.inner.tracker.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    async fn record_condition_failure(
        &self,
        event: &Event,
        failure: &ConditionFailure,
    ) -> Result<(), JournalError> {
        tracing::warn!(rule = %failure.rule.name, event = %event.id, error = %failure.error, "condition failed");
        metrics::counter!("zoomwire_condition_errors_total", "rule" => failure.rule.name.to_string()).increment(1);
        let mut record = new_record(&failure.rule, event, None);
        record.status = RunStatus::Skipped;
        record.error = Some(format!("condition error: {}", failure.error));
        record.finished_at = Some(Utc::now());
        self.inner.journal.record_run(&record).await
    }

    async fn submit(
        &self,
        rule_set: Arc<RuleSet>,
        rule: Arc<Rule>,
        event: Event,
        record: RunRecord,
        replay: Vec<EffectRecord>,
    ) -> Result<RunTicket, JournalError> {
        self.inner.journal.record_run(&record).await?;
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
        match self.admit(pending) {
            Admission::Start(run, cancel) => self.start(run, cancel),
            Admission::Queued => {}
            Admission::Skip(run, reason) => self.skip(run, reason).await?,
        }
        Ok(ticket)
    }

    fn admit(&self, run: PendingRun) -> Admission {
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
        self.inner.journal.record_run(&record).await?;
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
            let _ = executor.inner.finished.send(record.clone());
            let _ = done.send(record);
            executor.release(slot_key, &cancel);
        });
    }

    /// A run ended: free its place and start the next queued one.
    fn release(&self, slot_key: SlotKey, cancel: &Arc<AtomicBool>) {
        let next = {
            let mut slots = lock(&self.inner.slots);
            let Some(slot) = slots.get_mut(&slot_key) else {
                return;
            };
            slot.running.retain(|c| !Arc::ptr_eq(c, cancel));
            let next = if slot.running.is_empty() {
                slot.queue.pop_front().map(|run| start_in(slot, run))
            } else {
                None
            };
            if slot.running.is_empty() && slot.queue.is_empty() {
                slots.remove(&slot_key);
            }
            next
        };
        if let Some(Admission::Start(run, cancel)) = next {
            self.start(run, cancel);
        }
    }
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
        persist(inner, &record).await;
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
        .with_observer(observer),
    );
    let job = ScriptJob {
        sandbox: rule_set.sandbox().clone(),
        ast: rule.action.ast.clone(),
        event: event.body.clone(),
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
