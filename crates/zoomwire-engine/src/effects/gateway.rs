//! The gateway between one run's script and the [`Effects`] implementation.
//!
//! Host functions call [`RunEffects::call`] with an effect name and JSON
//! arguments. The gateway checks the rule's capabilities, numbers the call,
//! answers from the run's earlier attempts when the same call was already
//! made (so a retried run does not post to Slack twice), otherwise performs
//! it on the runtime within the run's deadline, and records it redacted
//! (`redact.rs`). The script gets the answer with only the process's own
//! secrets scrubbed; the record keeps that answer apart (`unredacted`,
//! sealed in the store) when redaction changed it, so a replay gives the
//! script what the first attempt got. Log lines and errors are redacted
//! too. Observers (the journal) see each record as soon as it completes, so
//! a crash after an effect does not repeat it on resume.
//!
//! A run's output is bounded ([`OutputLimits`]): it keeps at most
//! `max_log_lines` log lines and `max_log_bytes` of log text, then drops
//! the rest and ends its log with a line saying how much it dropped; its
//! effect calls (`now()` and `state::` included) stop at `max_effects`, and
//! the sandbox fails the run that asks for one more.
//!
//! An effect that is not harmless to repeat ([`is_repeatable`]) is written
//! as started ([`EffectObserver::effect_starting`], durable) before it is
//! performed, and its record replaces that mark once it completes. A crash
//! in between leaves the mark: the run that resumes finds the effect in
//! doubt (see `crate::engine::executor`). When a resumed run performs such
//! an effect again (the rule marks it idempotent), its new record says
//! `in_doubt` too: it may have happened twice.
//! A journal that can commit the mark without a blocked thread
//! ([`EffectObserver::effect_starting_async`]) has it written by the task
//! that then performs the effect, so the script thread sleeps once per
//! effect, until its answer, instead of once for the mark and once more for
//! the answer.
//!
//! A run may start once its event's statements ran, before their commit
//! (see `crate::engine::executor`): its effects then wait for that commit
//! ([`EventCommit`]), joined with their start mark's, and are refused when it
//! failed, so nothing a run does reaches outside for an event never written.
//!
//! Effects are performed on the runtime's threads, not the script's, and the
//! run keeps its own copy of each answer: the script thread's memory budget
//! counts what the thread allocates and frees, so memory made elsewhere must
//! not be freed there (see `crate::script::memory`).
//!
//! A script's last statement may leave its effect to the run
//! ([`RunEffects::call_last`], `crate::script::last_effect`): the script
//! thread starts it and goes on, and the run's task awaits and records it
//! ([`RunEffects::finish_last`]), on the runtime, as the thread would have.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::EffectName;
use super::redact::{redact, redact_error, redact_text, redact_tracked};
use super::{
    BoxFuture, CapabilitySet, EffectContext, EffectError, EffectErrorKind, EffectRequest, Effects,
    is_external, is_repeatable, required_capability,
};
use crate::secrets::Secrets;

/// One effect call of a run, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EffectRecord {
    /// 1-based position of the call in its run.
    pub seq: u32,
    pub name: String,
    /// Arguments with secrets redacted.
    pub args: Value,
    /// The result with secrets redacted: what records and the page show.
    pub result: Result<Value, EffectError>,
    /// The result the script got, when redaction changed it: what a replay
    /// answers. Never serialized (the journal keeps it sealed).
    #[serde(skip)]
    pub unredacted: Option<Value>,
    pub started_at: DateTime<Utc>,
    pub latency_ms: f64,
    /// True when the result came from an earlier attempt instead of being performed.
    #[serde(default)]
    pub replayed: bool,
    /// True when a crash came while this effect was being performed, so it
    /// may not have happened (an error of kind `in_doubt`), or, performed
    /// again after that, may have happened twice.
    #[serde(default)]
    pub in_doubt: bool,
}

/// An effect about to be performed, as written before it is (arguments redacted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EffectStart {
    pub seq: u32,
    pub name: String,
    pub args: Value,
    pub started_at: DateTime<Utc>,
}

impl EffectStart {
    /// The record of this effect when a crash left it unfinished.
    pub fn into_in_doubt_record(self) -> EffectRecord {
        let message = "zoomwire stopped while this effect was being performed: it may or may not have happened";
        EffectRecord {
            seq: self.seq,
            result: Err(EffectError::new(
                &self.name,
                EffectErrorKind::InDoubt,
                message,
            )),
            name: self.name,
            args: self.args,
            started_at: self.started_at,
            latency_ms: 0.0,
            replayed: false,
            in_doubt: true,
            unredacted: None,
        }
    }
}

impl EffectRecord {
    /// Whether this call changed the world (see [`is_external`]).
    pub fn is_external(&self) -> bool {
        is_external(&self.name)
    }
}

/// A log line written by `log::info/warn/error` in a script.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub level: String,
    pub message: String,
    pub at: DateTime<Utc>,
}

/// How much one run may log and how many effects it may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    pub max_log_lines: usize,
    pub max_log_bytes: usize,
    pub max_effects: usize,
}

impl Default for OutputLimits {
    fn default() -> OutputLimits {
        OutputLimits {
            max_log_lines: 1_000,
            max_log_bytes: 1024 * 1024,
            max_effects: 1_000,
        }
    }
}

/// The run's log: the lines kept, and what was dropped past the limits.
#[derive(Debug, Default)]
struct LogBook {
    lines: Vec<LogLine>,
    bytes: usize,
    dropped_lines: usize,
    dropped_bytes: usize,
}

/// Waits until an effect's record is saved; `Err` when it could not be.
pub type SavedWait = Box<dyn FnOnce() -> Result<(), String> + Send>;

/// Saves an effect's start mark on the runtime: durable once it resolves
/// `Ok` ([`EffectObserver::effect_starting_async`]).
pub type StartMark = BoxFuture<'static, Result<(), String>>;

/// The commit of the event a run belongs to, resolved once: every effect of
/// the run waits for it ([`RunEffects::with_event_commit`]). Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct EventCommit(Option<tokio::sync::watch::Receiver<Option<Result<(), String>>>>);

/// Resolves an [`EventCommit`]; dropped unresolved, the commit counts as failed.
#[derive(Debug)]
pub struct EventCommitted(tokio::sync::watch::Sender<Option<Result<(), String>>>);

impl EventCommit {
    /// An event already committed (or a journal that answers only then).
    pub fn committed() -> EventCommit {
        EventCommit(None)
    }

    /// A commit still to come, and what resolves it.
    pub fn pending() -> (EventCommitted, EventCommit) {
        let (sender, receiver) = tokio::sync::watch::channel(None);
        (EventCommitted(sender), EventCommit(Some(receiver)))
    }

    /// Waits for the commit: `Err` says why the event was not written.
    pub async fn wait(&self) -> Result<(), String> {
        let Some(receiver) = &self.0 else {
            return Ok(());
        };
        let mut receiver = receiver.clone();
        match receiver.wait_for(Option::is_some).await {
            Ok(result) => result.clone().unwrap_or(Ok(())),
            Err(_) => Err(UNRESOLVED.into()),
        }
    }

    /// Whether this is a commit still to wait for when made, not one known
    /// from the start ([`EventCommit::committed`]).
    pub fn is_awaited(&self) -> bool {
        self.0.is_some()
    }
}

impl EventCommitted {
    /// Ends every wait for the commit with `result`.
    pub fn resolve(self, result: Result<(), String>) {
        self.0.send_replace(Some(result));
    }
}

/// Why an [`EventCommit`] whose resolver was dropped failed.
const UNRESOLVED: &str = "the journal stopped before the event was committed";

/// Sees every effect of a run as it starts and as soon as it completes (the journal).
pub trait EffectObserver: Send + Sync {
    /// Saves that the effect is about to be performed, before it is:
    /// durable on `Ok`. Its record, when it completes, replaces the mark; a
    /// mark left without one after a crash means the effect is in doubt.
    /// On `Err` (the store cannot write) the effect is not performed.
    fn effect_starting(&self, run_id: &str, start: &EffectStart) -> Result<(), String>;

    /// [`EffectObserver::effect_starting`] as a future the runtime awaits,
    /// for a journal whose mark commits without blocking a thread: the
    /// gateway then awaits it in the task that performs the effect, and
    /// performs it only once the future resolves `Ok` (durable), so the
    /// script thread waits once, for the answer. `None` (the default): the
    /// gateway calls `effect_starting` on the script thread instead.
    fn effect_starting_async(&self, run_id: &str, start: &EffectStart) -> Option<StartMark> {
        let _ = (run_id, start);
        None
    }

    /// Whether marking an effect's start never blocks the calling thread
    /// (its mark is awaited on the runtime, or costs nothing): then a
    /// script may start its last effect on a runtime thread.
    fn marks_without_blocking(&self) -> bool {
        false
    }

    /// Saves the record before returning.
    fn effect_completed(&self, run_id: &str, record: &EffectRecord);

    /// Starts saving the record and returns a wait that ends once it is
    /// saved. The run waits on it before its next effect, so a crash can
    /// still repeat at most the one effect whose record was not saved, as
    /// with [`EffectObserver::effect_completed`], but the script goes on
    /// while the write commits (and a run's last effect never waits).
    fn effect_completed_later(&self, run_id: &str, record: &EffectRecord) -> SavedWait {
        self.effect_completed(run_id, record);
        Box::new(|| Ok(()))
    }
}

/// An effect's task on the runtime, answering with the effect's answer.
type EffectTask = tokio::task::JoinHandle<Result<Value, EffectError>>;

/// A call of the script, once checked and numbered.
enum Begun {
    /// Answered by an earlier attempt's record.
    Replayed(EffectRecord),
    /// To be performed: its task, or why it was not started.
    Started(Started),
}

/// A call whose effect was started (or refused at its start).
struct Started {
    call: CallStart,
    task: Result<EffectTask, EffectError>,
}

/// What the record of a performed call keeps of its start.
struct CallStart {
    seq: u32,
    name: String,
    redacted_args: Value,
    in_doubt: bool,
    started_at: DateTime<Utc>,
    started: Instant,
}

/// The script's last effect ([`RunEffects::call_last`]).
enum Last {
    /// Not called yet.
    Open,
    /// Started and left to the run's task.
    Running(Started),
    /// The run's task took it (or found none): the script waits for its own.
    Finished,
}

/// The effect side of one run attempt.
pub struct RunEffects {
    context: EffectContext,
    capabilities: CapabilitySet,
    effects: Arc<dyn Effects>,
    runtime: tokio::runtime::Handle,
    /// Records of earlier attempts (or of the run before a crash), replayed by position.
    replay: Vec<EffectRecord>,
    records: Mutex<Vec<EffectRecord>>,
    /// The save of the last effect's record, waited for before the next effect.
    saving: Mutex<Option<SavedWait>>,
    logs: Mutex<LogBook>,
    observer: Option<Arc<dyn EffectObserver>>,
    /// The run's event's commit, awaited before any effect.
    event_commit: EventCommit,
    transient_failure: AtomicBool,
    limits: OutputLimits,
    /// Set when a call was refused for `max_effects`.
    effects_exhausted: AtomicBool,
    /// Effects' answers as made on the runtime's threads, kept to be freed
    /// there ([`RunEffects::release_answers`]) and not on the script thread.
    made_elsewhere: Mutex<Vec<Result<Value, EffectError>>>,
    /// The script's last effect, when it left it running.
    last: Mutex<Last>,
}

impl RunEffects {
    pub fn new(
        context: EffectContext,
        capabilities: CapabilitySet,
        effects: Arc<dyn Effects>,
        runtime: tokio::runtime::Handle,
    ) -> RunEffects {
        RunEffects {
            context,
            capabilities,
            effects,
            runtime,
            replay: Vec::new(),
            records: Mutex::default(),
            saving: Mutex::default(),
            logs: Mutex::default(),
            observer: None,
            event_commit: EventCommit::committed(),
            transient_failure: AtomicBool::new(false),
            limits: OutputLimits::default(),
            effects_exhausted: AtomicBool::new(false),
            made_elsewhere: Mutex::default(),
            last: Mutex::new(Last::Open),
        }
    }

    /// Bounds the run's log and effect calls (else [`OutputLimits::default`]).
    pub fn with_output_limits(mut self, limits: OutputLimits) -> RunEffects {
        self.limits = limits;
        self
    }

    pub fn output_limits(&self) -> OutputLimits {
        self.limits
    }

    /// Answers calls from these records first, by position, while name and arguments agree.
    pub fn with_replay(mut self, records: Vec<EffectRecord>) -> RunEffects {
        self.replay = records;
        self
    }

    pub fn with_observer(mut self, observer: Arc<dyn EffectObserver>) -> RunEffects {
        self.observer = Some(observer);
        self
    }

    /// Performs no effect before `commit` resolves, and none if it failed.
    pub fn with_event_commit(mut self, commit: EventCommit) -> RunEffects {
        self.event_commit = commit;
        self
    }

    pub fn context(&self) -> &EffectContext {
        &self.context
    }

    /// Performs one effect for the script. Blocks the calling (sandbox) thread.
    pub fn call(&self, name: &str, args: Value) -> Result<Value, EffectError> {
        match self.begin(name, args)? {
            Begun::Replayed(earlier) => self.finish(earlier),
            Begun::Started(started) => self.wait_here(started),
        }
    }

    /// Performs the script's last effect (its last statement calls it): as
    /// [`RunEffects::call`], but once the effect is started the script
    /// thread goes on without its answer (`Ok(None)`): the script has nothing
    /// left to do with it, and the run's task waits for it instead
    /// ([`RunEffects::finish_last`]), so the thread is free for the next run
    /// meanwhile. An answer known at once (a replay, a refusal) comes back
    /// as from `call`; so does every answer once `finish_last` was called
    /// (a script still running after its run stopped waiting for it).
    pub fn call_last(&self, name: &str, args: Value) -> Result<Option<Value>, EffectError> {
        let started = match self.begin(name, args)? {
            Begun::Replayed(earlier) => return self.finish(earlier).map(Some),
            Begun::Started(started) => started,
        };
        let mut last = self.last.lock();
        if matches!(*last, Last::Open) && started.task.is_ok() {
            *last = Last::Running(started);
            return Ok(None);
        }
        drop(last);
        self.wait_here(started).map(Some)
    }

    /// Whether [`RunEffects::call_last`] of `name` would start the effect
    /// without blocking the calling thread: as the attempt's first call
    /// (nothing to replay, no earlier record to wait for), with a start mark
    /// that does not block. A runtime thread may make only such a call.
    pub fn begins_without_blocking(&self, name: &str) -> bool {
        (is_repeatable(name) || self.marks_without_blocking())
            && self.replay.is_empty()
            && self.records.lock().is_empty()
            && self.saving.lock().is_none()
            && matches!(*self.last.lock(), Last::Open)
    }

    /// Whether marking an effect's start never blocks (see
    /// [`EffectObserver::marks_without_blocking`]).
    pub fn marks_without_blocking(&self) -> bool {
        self.observer
            .as_ref()
            .is_none_or(|observer| observer.marks_without_blocking())
    }

    /// Waits for the effect [`RunEffects::call_last`] left running, and
    /// records it as `call` would have: on the runtime, once the script is
    /// over (or its run stopped waiting for it). `None` when the script left
    /// none; from then on a last effect is waited for by the script thread.
    /// What the script would have got is the answer: its last statement's value.
    pub async fn finish_last(&self) -> Option<Result<Value, EffectError>> {
        let Last::Running(started) = std::mem::replace(&mut *self.last.lock(), Last::Finished)
        else {
            return None;
        };
        let answer = match started.task {
            Ok(task) => joined(&started.call.name, task.await),
            Err(error) => Err(error),
        };
        Some(self.complete(started.call, answer))
    }

    /// The checks, the replay and the start mark of a call; then the
    /// effect's task on the runtime, or why it was not started.
    fn begin(&self, name: &str, args: Value) -> Result<Begun, EffectError> {
        self.check_room(name)?;
        self.check_capability(name, &args)?;
        let seq = self.next_seq();
        let redacted_args = redact(&args);
        if let Some(earlier) = self.replayed(seq, name, &redacted_args) {
            return Ok(Begun::Replayed(earlier));
        }
        let saved = self.wait_saved(name);
        let in_doubt = self.was_in_doubt(seq, name, &redacted_args);
        let started_at = Utc::now();
        let started = Instant::now();
        let marked = saved.and_then(|()| self.mark_started(seq, name, &redacted_args, started_at));
        let task = marked.and_then(|mark| self.perform(EffectRequest::new(name, args), mark));
        let call = CallStart {
            seq,
            name: name.to_string(),
            redacted_args,
            in_doubt,
            started_at,
            started,
        };
        Ok(Begun::Started(Started { call, task }))
    }

    /// Waits for a started effect on this (script) thread and records it.
    fn wait_here(&self, started: Started) -> Result<Value, EffectError> {
        let answer = match started.task {
            Ok(task) => {
                let made = joined(&started.call.name, self.runtime.block_on(task));
                // The copy is the run's (its thread allocates it); the answer
                // made on the runtime's threads is kept until the run is over
                // and freed there, without a task (and a wake-up of the
                // runtime) per effect.
                let copy = made.clone();
                self.made_elsewhere.lock().push(made);
                copy
            }
            Err(error) => Err(error),
        };
        self.complete(started.call, answer)
    }

    /// Records a started effect's answer and gives it as the script gets it.
    fn complete(
        &self,
        call: CallStart,
        result: Result<Value, EffectError>,
    ) -> Result<Value, EffectError> {
        let latency_ms = call.started.elapsed().as_secs_f64() * 1000.0;
        // The script's answer: the unredacted one when redaction changed it,
        // else the answer itself, equal to the record's (not a third copy).
        let (result, unredacted, answer) = match result {
            Ok(mut answer) => {
                Secrets::global().scrub_json(&mut answer);
                match redact_tracked(&answer) {
                    (shown, true) => (Ok(shown), Some(answer), None),
                    (shown, false) => (Ok(shown), None, Some(answer)),
                }
            }
            Err(error) => (Err(redact_error(error)), None, None),
        };
        metrics::histogram!("zoomwire_effect_seconds", "effect" => EffectName::metric_label(&call.name))
            .record(latency_ms / 1000.0);
        let record = EffectRecord {
            seq: call.seq,
            name: call.name,
            args: call.redacted_args,
            result,
            unredacted,
            started_at: call.started_at,
            latency_ms,
            replayed: false,
            in_doubt: call.in_doubt,
        };
        self.finish_answering(record, answer)
    }

    /// Writes that an effect which is not harmless to repeat is starting, and
    /// refuses to perform it when that cannot be written; or, when the
    /// observer writes it on the runtime, returns that write for
    /// [`RunEffects::perform`] to await before performing the effect.
    fn mark_started(
        &self,
        seq: u32,
        name: &str,
        redacted_args: &Value,
        started_at: DateTime<Utc>,
    ) -> Result<Option<StartMark>, EffectError> {
        let Some(observer) = self.observer.as_ref().filter(|_| !is_repeatable(name)) else {
            return Ok(None);
        };
        let start = EffectStart {
            seq,
            name: name.to_string(),
            args: redacted_args.clone(),
            started_at,
        };
        if let Some(mark) = observer.effect_starting_async(&self.context.run_id, &start) {
            return Ok(Some(mark));
        }
        observer
            .effect_starting(&self.context.run_id, &start)
            .map(|()| None)
            .map_err(|error| not_marked(name, &error))
    }

    /// Whether the earlier attempt left this same call in doubt.
    fn was_in_doubt(&self, seq: u32, name: &str, redacted_args: &Value) -> bool {
        self.replay
            .get(seq as usize - 1)
            .is_some_and(|e| e.in_doubt && e.name == name && e.args == *redacted_args)
    }

    /// Starts the request on the runtime's threads, after its start `mark`
    /// is saved if one is given and its event committed, to end at the
    /// latest at the run's deadline.
    fn perform(
        &self,
        request: EffectRequest,
        mark: Option<StartMark>,
    ) -> Result<EffectTask, EffectError> {
        if Instant::now() >= self.context.deadline {
            return Err(timeout_error(&request.name));
        }
        let (effects, context) = (self.effects.clone(), self.context.clone());
        let event_commit = self.event_commit.clone();
        // One task for the mark, the event's commit and the effect: the
        // script thread is woken once, with the answer.
        Ok(self.runtime.spawn(async move {
            // The mark first (queued when first polled): the one writer
            // commits it after the event, and resolves the event's commit
            // before answering it, so the second wait is then already over.
            let marked = match mark {
                Some(mark) => mark.await,
                None => Ok(()),
            };
            event_commit
                .wait()
                .await
                .map_err(|error| event_not_written(&request.name, &error))?;
            marked.map_err(|error| not_marked(&request.name, &error))?;
            let deadline = tokio::time::Instant::from_std(context.deadline);
            if tokio::time::Instant::now() >= deadline {
                return Err(timeout_error(&request.name));
            }
            tokio::time::timeout_at(deadline, effects.perform(&context, &request))
                .await
                .unwrap_or_else(|_elapsed| Err(timeout_error(&request.name)))
        }))
    }

    /// Frees the effects' answers as made on the runtime's threads: call it
    /// there once the script is done. Whatever is left is freed with the
    /// `RunEffects`, which the run's task holds last.
    pub fn release_answers(&self) {
        let answers = std::mem::take(&mut *self.made_elsewhere.lock());
        drop(answers);
    }

    /// Refuses a call past `max_effects`.
    fn check_room(&self, name: &str) -> Result<(), EffectError> {
        let max = self.limits.max_effects;
        if self.records.lock().len() < max {
            return Ok(());
        }
        self.effects_exhausted.store(true, Ordering::Relaxed);
        Err(EffectError::permanent(
            name,
            format!("the run already made {max} effect calls (max_effects = {max})"),
        ))
    }

    /// Whether a call was refused because the run made `max_effects` calls.
    pub fn effects_exhausted(&self) -> bool {
        self.effects_exhausted.load(Ordering::Relaxed)
    }

    fn finish(&self, record: EffectRecord) -> Result<Value, EffectError> {
        self.finish_answering(record, None)
    }

    /// Keeps the record and answers the script: with `answer` when given
    /// (the record's result as is, already a copy of its own), else from
    /// the record.
    fn finish_answering(
        &self,
        record: EffectRecord,
        answer: Option<Value>,
    ) -> Result<Value, EffectError> {
        if let Err(error) = &record.result
            && error.is_transient()
        {
            self.transient_failure.store(true, Ordering::Relaxed);
        }
        if let Some(observer) = &self.observer {
            self.save(observer.as_ref(), &record);
        }
        let result = match (&record.result, &record.unredacted, answer) {
            (Ok(_), None, Some(answer)) => Ok(answer),
            (Ok(_), Some(answer), _) => Ok(answer.clone()),
            (result, _, _) => result.clone(),
        };
        self.records.lock().push(record);
        result
    }

    /// Starts saving the record; the next effect waits for it. A replayed
    /// record is saved again too (a no-op when the store has it): the attempt
    /// that made it may have failed to save it (a full disk), and a crash
    /// after this attempt's next effect would then leave two in doubt.
    fn save(&self, observer: &dyn EffectObserver, record: &EffectRecord) {
        let saved = if record.replayed {
            let as_made = EffectRecord {
                replayed: false,
                ..record.clone()
            };
            observer.effect_completed_later(&self.context.run_id, &as_made)
        } else {
            observer.effect_completed_later(&self.context.run_id, record)
        };
        let mut saving = self.saving.lock();
        *saving = Some(match saving.take() {
            // Replayed records follow one another without a wait between them.
            Some(earlier) => Box::new(move || earlier().and_then(|()| saved())),
            None => saved,
        });
    }

    /// Waits until the previous effect's record is saved. When it could not
    /// be (a full disk), the next effect is refused: made anyway, a crash
    /// would leave two effects of the run in doubt, not one.
    fn wait_saved(&self, name: &str) -> Result<(), EffectError> {
        let saving = self.saving.lock().take();
        match saving {
            Some(wait) => wait().map_err(|error| {
                EffectError::transient(
                    name,
                    format!("not performed: the previous effect's record was not saved: {error}"),
                )
            }),
            None => Ok(()),
        }
    }

    fn check_capability(&self, name: &str, args: &Value) -> Result<(), EffectError> {
        let Some(capability) = required_capability(name) else {
            return Ok(());
        };
        if !self.capabilities.allows(capability) {
            let needed = if capability == "http" {
                "http:<host>"
            } else {
                capability
            };
            return Err(EffectError::new(
                name,
                EffectErrorKind::Denied,
                format!(
                    "rule `{}` lacks the capability `{needed}`: add it to the rule's `allow:` list",
                    self.context.rule
                ),
            ));
        }
        if name == EffectName::HttpRequest.as_str() {
            let url = args["url"].as_str().and_then(|u| url::Url::parse(u).ok());
            let host = url
                .as_ref()
                .and_then(|u| u.host_str().map(str::to_string))
                .unwrap_or_default();
            let port = url.as_ref().and_then(url::Url::port_or_known_default);
            if !self.capabilities.allows_host(&host) {
                return Err(EffectError::new(
                    name,
                    EffectErrorKind::Denied,
                    format!(
                        "rule `{}` may not reach host `{host}`: add `http:{host}` to the rule's `allow:` list",
                        self.context.rule
                    ),
                ));
            }
            if let Some(port) = port
                && !self.capabilities.allows_target(&host, port)
            {
                return Err(EffectError::new(
                    name,
                    EffectErrorKind::Denied,
                    format!(
                        "rule `{}` may not reach port {port} of `{host}` (`http:{host}` allows ports 80 and 443): add `http:{host}:{port}` to the rule's `allow:` list",
                        self.context.rule
                    ),
                ));
            }
        }
        Ok(())
    }

    fn next_seq(&self) -> u32 {
        self.records.lock().len() as u32 + 1
    }

    fn replayed(&self, seq: u32, name: &str, redacted_args: &Value) -> Option<EffectRecord> {
        let earlier = self.replay.get(seq as usize - 1)?;
        if earlier.name != name || earlier.args != *redacted_args {
            return None;
        }
        // A failed call is performed again; a completed one is not.
        earlier.result.as_ref().ok()?;
        Some(EffectRecord {
            replayed: true,
            ..earlier.clone()
        })
    }

    /// Records a script log line (also sent to tracing), or counts it as
    /// dropped past `max_log_lines` or `max_log_bytes`.
    pub fn log(&self, level: &str, message: String) {
        self.log_at(level, message, Utc::now());
    }

    /// As [`RunEffects::log`], for a line the script wrote at `at` (one held
    /// while its run might still move, see `script::inline`).
    pub fn log_at(&self, level: &str, message: String, at: DateTime<Utc>) {
        let message = match redact_text(&message) {
            std::borrow::Cow::Borrowed(_) => message,
            std::borrow::Cow::Owned(shown) => shown,
        };
        let mut book = self.logs.lock();
        let full = book.lines.len() >= self.limits.max_log_lines
            || book.bytes + message.len() > self.limits.max_log_bytes;
        if full {
            if book.dropped_lines == 0 {
                tracing::warn!(rule = %self.context.rule, run = %self.context.run_id, max_log_lines = self.limits.max_log_lines, max_log_bytes = self.limits.max_log_bytes, "script log truncated: later lines are dropped");
            }
            book.dropped_lines += 1;
            book.dropped_bytes += message.len();
            return;
        }
        match level {
            "error" => {
                tracing::error!(rule = %self.context.rule, run = %self.context.run_id, "{message}")
            }
            "warn" => {
                tracing::warn!(rule = %self.context.rule, run = %self.context.run_id, "{message}")
            }
            _ => tracing::info!(rule = %self.context.rule, run = %self.context.run_id, "{message}"),
        }
        book.bytes += message.len();
        book.lines.push(LogLine {
            level: level.to_string(),
            message,
            at,
        });
    }

    /// The current time, recorded as an effect so that a resumed run sees the
    /// same clock (and so counted against `max_effects`).
    pub fn now(&self) -> Result<DateTime<Utc>, EffectError> {
        self.check_room(EffectName::Now.as_str())?;
        let seq = self.next_seq();
        if let Some(earlier) = self.replayed(seq, EffectName::Now.as_str(), &Value::Null)
            && let Some(at) = earlier
                .result
                .as_ref()
                .ok()
                .and_then(|v| v.as_str())
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        {
            let at = at.with_timezone(&Utc);
            let _ = self.finish(earlier);
            return Ok(at);
        }
        let now = Utc::now();
        let _ = self.finish(EffectRecord {
            seq,
            name: EffectName::Now.as_str().into(),
            args: Value::Null,
            result: Ok(Value::String(now.to_rfc3339())),
            unredacted: None,
            started_at: now,
            latency_ms: 0.0,
            replayed: false,
            in_doubt: false,
        });
        Ok(now)
    }

    /// Whether any effect failed in a way worth retrying the run for.
    pub fn had_transient_failure(&self) -> bool {
        self.transient_failure.load(Ordering::Relaxed)
    }

    pub fn records(&self) -> Vec<EffectRecord> {
        self.records.lock().clone()
    }

    /// The log lines kept, then, if any were dropped, a last line saying how many.
    pub fn logs(&self) -> Vec<LogLine> {
        let book = self.logs.lock();
        let mut lines = book.lines.clone();
        if book.dropped_lines > 0 {
            lines.push(LogLine {
                level: "warn".into(),
                message: format!(
                    "log truncated: {} more line{} ({} bytes) dropped (max_log_lines = {}, max_log_bytes = {})",
                    book.dropped_lines,
                    if book.dropped_lines == 1 { "" } else { "s" },
                    book.dropped_bytes,
                    self.limits.max_log_lines,
                    self.limits.max_log_bytes
                ),
                at: Utc::now(),
            });
        }
        lines
    }
}

/// An effect task's answer; a bug in the effect (a panic) fails the run
/// as if it had happened where the task is awaited.
fn joined(
    effect: &str,
    joined: Result<Result<Value, EffectError>, tokio::task::JoinError>,
) -> Result<Value, EffectError> {
    match joined {
        Ok(answer) => answer,
        Err(join_error) if join_error.is_panic() => {
            std::panic::resume_unwind(join_error.into_panic())
        }
        Err(_cancelled) => Err(EffectError::transient(
            effect,
            "the runtime stopped while performing this effect",
        )),
    }
}

/// The refusal of an effect whose start could not be saved.
fn not_marked(effect: &str, error: &str) -> EffectError {
    EffectError::transient(
        effect,
        format!("not performed: cannot record in the store that it starts: {error}"),
    )
}

/// The refusal of an effect whose run's event could not be written: the run
/// is stopped, not retried (see `crate::engine::attempt`).
fn event_not_written(effect: &str, error: &str) -> EffectError {
    EffectError::permanent(
        effect,
        format!("not performed: the run's event could not be written to the store: {error}"),
    )
}

fn timeout_error(effect: &str) -> EffectError {
    EffectError::new(
        effect,
        EffectErrorKind::Timeout,
        "the run's deadline passed while waiting for this effect",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effects::Capability;
    use crate::effects::recorder::RecordingEffects;
    use serde_json::json;
    use std::time::Duration;

    fn run_effects(capabilities: Vec<Capability>, runtime: &tokio::runtime::Runtime) -> RunEffects {
        let capabilities = CapabilitySet::new(capabilities);
        let context = EffectContext {
            rule: Arc::from("rule-a"),
            run_id: Arc::from("run-1"),
            deadline: Instant::now() + Duration::from_secs(5),
            http_hosts: capabilities.http_hosts(),
            download_token: None,
            zoom_account: Default::default(),
        };
        RunEffects::new(
            context,
            capabilities,
            Arc::new(RecordingEffects::default()),
            runtime.handle().clone(),
        )
    }

    /// Logs what happens in order: effects performed, saves started and waited for.
    #[derive(Default)]
    struct Ledger(Arc<Mutex<Vec<String>>>);

    impl Effects for Ledger {
        fn perform<'a>(
            &'a self,
            _context: &'a EffectContext,
            request: &'a EffectRequest,
        ) -> crate::effects::BoxFuture<'a, Result<Value, EffectError>> {
            self.0
                .lock()
                .push(format!("perform {}", request.args["text"]));
            Box::pin(async { Ok(json!({"ok": true})) })
        }
    }

    impl EffectObserver for Ledger {
        fn effect_starting(&self, _run_id: &str, start: &EffectStart) -> Result<(), String> {
            self.0.lock().push(format!("start {}", start.seq));
            Ok(())
        }

        fn effect_completed(&self, _run_id: &str, _record: &EffectRecord) {
            unreachable!("the gateway saves without blocking")
        }

        fn effect_completed_later(&self, _run_id: &str, record: &EffectRecord) -> SavedWait {
            self.0.lock().push(format!("save {}", record.seq));
            let (log, seq) = (self.0.clone(), record.seq);
            Box::new(move || {
                log.lock().push(format!("saved {seq}"));
                Ok(())
            })
        }
    }

    #[test]
    fn an_effect_waits_for_the_previous_record_to_be_saved_but_the_last_does_not() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let capabilities = CapabilitySet::new(vec![Capability::Slack]);
        let context = EffectContext {
            rule: Arc::from("rule-a"),
            run_id: Arc::from("run-1"),
            deadline: Instant::now() + Duration::from_secs(5),
            http_hosts: capabilities.http_hosts(),
            download_token: None,
            zoom_account: Default::default(),
        };
        let gateway = RunEffects::new(
            context,
            capabilities,
            Arc::new(Ledger(log.clone())),
            runtime.handle().clone(),
        )
        .with_observer(Arc::new(Ledger(log.clone())));
        for text in ["one", "two"] {
            gateway
                .call("slack.post", json!({"channel": "#a", "text": text}))
                .unwrap();
        }
        assert_eq!(
            *log.lock(),
            [
                "start 1",
                r#"perform "one""#,
                "save 1",
                "saved 1",
                "start 2",
                r#"perform "two""#,
                "save 2"
            ]
        );
    }

    /// A store whose saves of the records listed in `failing` fail (a full disk).
    struct ShakyStore {
        log: Arc<Mutex<Vec<String>>>,
        failing: Mutex<Vec<u32>>,
    }

    impl EffectObserver for ShakyStore {
        fn effect_starting(&self, _run_id: &str, start: &EffectStart) -> Result<(), String> {
            self.log.lock().push(format!("start {}", start.seq));
            Ok(())
        }

        fn effect_completed(&self, _run_id: &str, _record: &EffectRecord) {}

        fn effect_completed_later(&self, _run_id: &str, record: &EffectRecord) -> SavedWait {
            let fails = self.failing.lock().contains(&record.seq);
            let (log, seq) = (self.log.clone(), record.seq);
            log.lock().push(format!("save {seq}"));
            Box::new(move || match fails {
                true => Err("disk full".into()),
                false => {
                    log.lock().push(format!("saved {seq}"));
                    Ok(())
                }
            })
        }
    }

    #[test]
    fn a_retry_saves_the_records_it_replays_before_its_next_effect() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let store = Arc::new(ShakyStore {
            log: log.clone(),
            failing: Mutex::new(vec![2]),
        });
        let post = |text: &str| json!({"channel": "#a", "text": text});
        let first = run_effects(vec![Capability::Slack], &runtime).with_observer(store.clone());
        first.call("slack.post", post("one")).unwrap();
        first.call("slack.post", post("two")).unwrap();
        let refused = first.call("slack.post", post("three")).unwrap_err();
        assert!(refused.message.contains("not saved"), "{}", refused.message);
        assert!(refused.is_transient());

        // The retry replays one and two; two's record is saved before three.
        log.lock().clear();
        let retry = run_effects(vec![Capability::Slack], &runtime)
            .with_replay(first.records())
            .with_observer(store.clone());
        retry.call("slack.post", post("one")).unwrap();
        retry.call("slack.post", post("two")).unwrap();
        let still_full = retry.call("slack.post", post("three")).unwrap_err();
        assert!(
            still_full.message.contains("not saved"),
            "{}",
            still_full.message
        );
        assert_eq!(
            *log.lock(),
            ["save 1", "save 2", "saved 1", "save 3"],
            "three not started (its refusal is recorded)"
        );

        store.failing.lock().clear();
        log.lock().clear();
        let last = run_effects(vec![Capability::Slack], &runtime)
            .with_replay(retry.records())
            .with_observer(store.clone());
        for text in ["one", "two", "three"] {
            last.call("slack.post", post(text)).unwrap();
        }
        assert_eq!(
            *log.lock(),
            [
                "save 1", "save 2", "saved 1", "saved 2", "start 3", "save 3"
            ]
        );
        let records = last.records();
        assert!(records[0].replayed && records[1].replayed && !records[2].replayed);
    }

    /// An observer whose store cannot write the start marks.
    struct FullStore(Arc<Mutex<Vec<String>>>);

    impl EffectObserver for FullStore {
        fn effect_starting(&self, _run_id: &str, start: &EffectStart) -> Result<(), String> {
            self.0.lock().push(format!("refused {}", start.name));
            Err("the store is full".into())
        }

        fn effect_completed(&self, _run_id: &str, _record: &EffectRecord) {}
    }

    #[test]
    fn an_effect_whose_start_cannot_be_recorded_is_not_performed_and_reads_need_no_mark() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let gateway = run_effects(vec![Capability::Slack, Capability::ZoomRead], &runtime)
            .with_observer(Arc::new(FullStore(log.clone())));
        let error = gateway
            .call("slack.post", json!({"channel": "#a", "text": "hi"}))
            .unwrap_err();
        assert!(error.is_transient(), "retried later: {error}");
        assert!(error.message.contains("not performed"), "{}", error.message);
        gateway
            .call("zoom.get", json!({"path": "/users/me", "params": {}}))
            .unwrap();
        gateway
            .call("state.set", json!({"key": "k", "value": 1}))
            .unwrap();
        assert_eq!(
            *log.lock(),
            ["refused slack.post"],
            "reads and state need no mark"
        );
    }

    /// A store that saves start marks on the runtime, failing when `full`.
    struct AsyncStore {
        log: Arc<Mutex<Vec<String>>>,
        full: bool,
    }

    impl EffectObserver for AsyncStore {
        fn effect_starting(&self, _run_id: &str, _start: &EffectStart) -> Result<(), String> {
            unreachable!("the mark is saved on the runtime")
        }

        fn effect_starting_async(&self, _run_id: &str, start: &EffectStart) -> Option<StartMark> {
            let (log, seq, full) = (self.log.clone(), start.seq, self.full);
            Some(Box::pin(async move {
                tokio::task::yield_now().await;
                if full {
                    log.lock().push(format!("refused {seq}"));
                    return Err("the store is full".into());
                }
                log.lock().push(format!("marked {seq}"));
                Ok(())
            }))
        }

        fn effect_completed(&self, _run_id: &str, record: &EffectRecord) {
            self.log.lock().push(format!("save {}", record.seq));
        }
    }

    #[test]
    fn a_mark_saved_on_the_runtime_comes_before_its_effect_which_it_can_refuse() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        for full in [false, true] {
            let log = Arc::new(Mutex::new(Vec::new()));
            let mut gateway = run_effects(vec![Capability::Slack], &runtime).with_observer(
                Arc::new(AsyncStore {
                    log: log.clone(),
                    full,
                }),
            );
            gateway.effects = Arc::new(Ledger(log.clone()));
            let answer = gateway.call("slack.post", json!({"channel": "#a", "text": "hi"}));
            if full {
                let error = answer.unwrap_err();
                assert!(error.is_transient(), "retried later: {error}");
                assert!(error.message.contains("not performed"), "{}", error.message);
                assert_eq!(*log.lock(), ["refused 1", "save 1"]);
            } else {
                answer.unwrap();
                assert_eq!(*log.lock(), ["marked 1", r#"perform "hi""#, "save 1"]);
            }
        }
    }

    #[test]
    fn an_effect_left_in_doubt_and_performed_again_stays_marked() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let args = json!({"channel": "#a", "text": "hi"});
        let earlier = EffectStart {
            seq: 1,
            name: "slack.post".into(),
            args: args.clone(),
            started_at: Utc::now(),
        }
        .into_in_doubt_record();
        let gateway = run_effects(vec![Capability::Slack], &runtime).with_replay(vec![earlier]);
        gateway.call("slack.post", args).unwrap();
        gateway
            .call("slack.post", json!({"channel": "#a", "text": "next"}))
            .unwrap();
        let records = gateway.records();
        assert!(records[0].in_doubt && !records[0].replayed && records[0].result.is_ok());
        assert!(!records[1].in_doubt);
    }

    /// Answers every call with the JSON it was made with.
    struct Answers(Value);

    impl Effects for Answers {
        fn perform<'a>(
            &'a self,
            _context: &'a EffectContext,
            _request: &'a EffectRequest,
        ) -> crate::effects::BoxFuture<'a, Result<Value, EffectError>> {
            let answer = self.0.clone();
            Box::pin(async move { Ok(answer) })
        }
    }

    #[test]
    fn the_script_gets_the_answer_as_made_and_the_record_its_redacted_form() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let secret = json!({"ok": true, "join_url": "https://z.test/j/1?pwd=abc", "token": "t-1"});
        let clean = json!({"ok": true, "channel": "C1", "ts": "1.2"});
        for (answer, redacted) in [
            (
                secret,
                json!({"ok": true, "join_url": "https://z.test/j/1?pwd=[redacted]", "token": "[redacted]"}),
            ),
            (clean.clone(), clean.clone()),
        ] {
            let mut gateway = run_effects(vec![Capability::Slack], &runtime);
            gateway.effects = Arc::new(Answers(answer.clone()));
            let got = gateway
                .call("slack.post", json!({"channel": "#a", "text": "hi"}))
                .unwrap();
            assert_eq!(got, answer);
            let records = gateway.records();
            assert_eq!(records[0].result.as_ref().unwrap(), &redacted);
            assert_eq!(records[0].unredacted.is_some(), answer != redacted);
        }
    }

    #[test]
    fn records_numbered_calls_with_redacted_arguments() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let gateway = run_effects(vec![Capability::Slack], &runtime);
        gateway
            .call(
                "slack.post",
                json!({"channel": "#a", "text": "hi", "token": "xoxb"}),
            )
            .unwrap();
        gateway
            .call("state.set", json!({"key": "k", "value": 1}))
            .unwrap();
        let records = gateway.records();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].seq, 1);
        assert_eq!(records[0].args["token"], "[redacted]");
        assert_eq!(records[1].name, "state.set");
    }

    #[test]
    fn bounds_the_log_and_the_effect_calls() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let gateway = run_effects(vec![], &runtime).with_output_limits(OutputLimits {
            max_log_lines: 2,
            max_log_bytes: 10,
            max_effects: 3,
        });
        for message in ["abcd", "efgh", "ij", "klmnopqrstuvwxyz"] {
            gateway.log("info", message.to_string());
        }
        let logs: Vec<String> = gateway.logs().into_iter().map(|l| l.message).collect();
        assert_eq!(
            logs,
            [
                "abcd",
                "efgh",
                "log truncated: 2 more lines (18 bytes) dropped (max_log_lines = 2, max_log_bytes = 10)"
            ]
        );
        gateway.now().unwrap();
        gateway
            .call("state.set", json!({"key": "k", "value": 1}))
            .unwrap();
        gateway.now().unwrap();
        assert!(!gateway.effects_exhausted());
        let refused = gateway.now().unwrap_err();
        assert_eq!(
            refused.message,
            "the run already made 3 effect calls (max_effects = 3)"
        );
        assert!(gateway.effects_exhausted());
        assert!(gateway.call("state.get", json!({"key": "k"})).is_err());
        assert_eq!(gateway.records().len(), 3);
    }

    #[test]
    fn refuses_a_missing_capability_naming_it() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let gateway = run_effects(vec![], &runtime);
        let error = gateway
            .call("slack.post", json!({"channel": "#a", "text": "hi"}))
            .unwrap_err();
        assert_eq!(error.kind, EffectErrorKind::Denied);
        assert!(error.message.contains("`slack`"), "{}", error.message);
    }

    #[test]
    fn refuses_hosts_outside_the_allow_list() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let gateway = run_effects(vec![Capability::Http("api.example.com".into())], &runtime);
        assert!(
            gateway
                .call(
                    "http.request",
                    json!({"method": "GET", "url": "https://api.example.com/x"})
                )
                .is_ok()
        );
        for url in [
            "https://evil.test/x",
            "https://api.example.com@evil.test/",
            "http://127.0.0.1/",
        ] {
            let error = gateway
                .call("http.request", json!({"method": "GET", "url": url}))
                .unwrap_err();
            assert_eq!(error.kind, EffectErrorKind::Denied, "{url}");
        }
    }

    #[test]
    fn replays_completed_calls_of_an_earlier_attempt() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let first = run_effects(vec![Capability::Slack], &runtime);
        let args = json!({"channel": "#a", "text": "hi"});
        first.call("slack.post", args.clone()).unwrap();
        let earlier = first.records();
        let second = run_effects(vec![Capability::Slack], &runtime).with_replay(earlier);
        second.call("slack.post", args).unwrap();
        second
            .call("slack.post", json!({"channel": "#b", "text": "new"}))
            .unwrap();
        let records = second.records();
        assert!(records[0].replayed);
        assert!(!records[1].replayed);
    }
}
