//! One run's attempts: each takes a place in the script pool, starts its
//! clock (the rule's `timeout` covers the script and its effects, not the
//! wait for a place), runs the script with the run's effects (on this
//! runtime thread while it can, `crate::script::inline`), and records the
//! outcome.
//! A failure caused by a transient effect error is retried after the rule's
//! backoff, replaying the effects that completed; a cancelled run (`restart`)
//! stops at once, even while it waits to retry.
//!
//! An attempt's records are written without its effects: the journal was
//! given each as it completed. The effect a script's last statement left
//! running (`crate::script::last_effect`) is awaited and recorded here, once
//! the script's thread is free again. A final record that cannot be
//! written (a full disk) is written again, whole, until it is
//! ([`write_again`]): the process that ran the run knows how it ended.
//!
//! A run may start before its event's commit (see `executor.rs`): its
//! effects wait for it, and before anything of the run is recorded (a
//! retry's failed attempt, the outcome) the run waits for it too. If the
//! commit failed, the run ends there, recorded nowhere.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rhai::Dynamic;

use super::admission::CancelFlag;
use super::journal::{Journal, JournalError, RunRecord, RunSaving, RunStatus};
use crate::effects::gateway::{EffectObserver, EffectRecord, EventCommit, RunEffects};
use crate::effects::redact::{redact, redact_text};
use crate::effects::{EffectContext, Effects, ZoomAccountRef};
use crate::event::Event;
use crate::rules::{Rule, RuleSet};
use crate::script::{ScriptError, ScriptJob, ScriptPool, last_effect};

/// How a run waits before its next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryWaits {
    /// The rule's backoff (the daemon).
    Backoff,
    /// None: `zoomwire test` checks what a rule does on its retries, not
    /// how long it waits for them.
    Skipped,
}

/// What every run needs: where it is recorded, the effects it makes, the
/// threads it runs on.
pub struct Runner {
    pub journal: Arc<dyn Journal>,
    pub effects: Arc<dyn Effects>,
    pub pool: Arc<ScriptPool>,
    pub vars: Dynamic,
    pub retry_waits: RetryWaits,
}

/// The run to execute, with what it replays.
pub struct Run<'a> {
    pub rule_set: &'a Arc<RuleSet>,
    pub rule: &'a Arc<Rule>,
    pub event: &'a Event,
    pub record: RunRecord,
    pub replay: Vec<EffectRecord>,
    pub cancel: &'a CancelFlag,
    /// Its event's commit: no effect and no record before it.
    pub commit: &'a EventCommit,
}

/// What stops an attempt from outside: `restart` cancelling the run, and
/// its event's commit, which its effects wait for.
struct Stops<'a> {
    cancel: &'a CancelFlag,
    commit: &'a EventCommit,
}

const CANCELLED: &str = "cancelled: a newer run replaced it (mode restart)";

/// A run whose attempts are over: its final record, written or queued.
pub struct Finished {
    pub record: RunRecord,
    /// The first write of the record: queued, or already over.
    saving: RunSaving,
    journal: Arc<dyn Journal>,
}

/// The first wait before writing a final record again, doubled up to the
/// second.
const REWRITE_WAITS: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

impl Finished {
    /// Waits until the final record is written, writing it again as
    /// [`write_again`] does when it could not be.
    pub async fn saved(self) -> RunRecord {
        let Finished {
            record,
            saving,
            journal,
        } = self;
        if let Err(error) = saving.await {
            write_again(journal.as_ref(), &record, error).await;
        }
        record
    }
}

/// Writes a run's final record again, whole (its effects included), after
/// a backoff, until it is written (it failed with `error`: a full disk) or
/// the store shows the run finished (another node took it over). This
/// process knows how the run ended, and its executor holds the run
/// meanwhile, so that the poll for unfinished runs does not resume it and
/// repeat its last effect (or call it in doubt). A stop before then leaves
/// the run unfinished in the store, as a kill would: it resumes on the next
/// start.
pub(super) async fn write_again(journal: &dyn Journal, record: &RunRecord, error: JournalError) {
    tracing::error!(run = %record.id, error = %error, "could not record the run's end: writing it again until it is written");
    let (mut wait, longest) = REWRITE_WAITS;
    loop {
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(longest);
        if journal.record_run(record).await.is_ok() {
            tracing::info!(run = %record.id, status = record.status.as_str(), "the run's end is recorded after all");
            return;
        }
        if finished_in_store(journal, &record.id).await {
            tracing::warn!(run = %record.id, "the run's end was recorded elsewhere: this node's is not");
            return;
        }
    }
}

/// Whether the store holds the run as finished (or no longer holds it).
async fn finished_in_store(journal: &dyn Journal, run_id: &str) -> bool {
    let ids = [run_id.to_string()];
    journal
        .unfinished_runs_among(&ids)
        .await
        .is_ok_and(|unfinished| unfinished.is_empty())
}

impl Runner {
    /// Runs the attempts of one run and writes its final record, or queues
    /// it where the journal keeps the order of its writes
    /// ([`Journal::queue_observed_run`]): then the run's place can go to the
    /// next run before that record's commit ([`Finished::saved`]). `None`
    /// when its event's commit failed (nothing of the run is recorded).
    pub async fn execute(&self, run: Run<'_>) -> Option<Finished> {
        let Run {
            rule_set,
            rule,
            event,
            mut record,
            mut replay,
            cancel,
            commit,
        } = run;
        let started = Instant::now();
        let stops = Stops { cancel, commit };
        for attempt in record.attempt.max(1).. {
            record.attempt = attempt;
            record.status = RunStatus::Running;
            record.error = None;
            let (result, effects) = self
                .run_attempt(rule_set, rule, event, &mut record, replay, &stops)
                .await;
            if let Err(error) = commit.wait().await {
                tracing::warn!(rule = %rule.name, run = %record.id, error = %error, "run stopped: its event could not be written");
                return None;
            }
            record.effects = effects.records();
            record.logs = effects.logs();
            let error = match result {
                Ok(output) => {
                    record.status = RunStatus::Succeeded;
                    record.output = rhai::serde::from_dynamic::<serde_json::Value>(&output)
                        .ok()
                        .filter(|v| !v.is_null())
                        .map(|v| redact(&v));
                    break;
                }
                Err(ScriptError::Cancelled) => {
                    record.status = RunStatus::Skipped;
                    record.error = Some(CANCELLED.into());
                    break;
                }
                Err(error) => error,
            };
            record.error = Some(redact_text(&describe_error(rule, &error)).into_owned());
            let retryable = is_retryable(&error, &effects) && !cancel.is_cancelled();
            if !retryable || attempt >= rule.retry.attempts {
                // Dead: a transient failure that outlasted every retry the rule allows.
                record.status = if retryable && rule.retry.attempts > 1 {
                    RunStatus::Dead
                } else {
                    RunStatus::Failed
                };
                break;
            }
            record.status = RunStatus::Failed;
            self.persist(&record).await;
            let delay = match self.retry_waits {
                RetryWaits::Backoff => rule.retry.delay_before(attempt + 1),
                RetryWaits::Skipped => Duration::ZERO,
            };
            tracing::warn!(rule = %rule.name, run = %record.id, attempt, error = %record.error.as_deref().unwrap_or_default(), delay_ms = delay.as_millis() as u64, "run failed, retrying");
            if !wait_before_retry(delay, cancel).await {
                record.status = RunStatus::Skipped;
                record.error = Some(CANCELLED.into());
                break;
            }
            replay = record.effects.clone();
        }
        record.finished_at = Some(Utc::now());
        let saving = match self.journal.queue_observed_run(&record) {
            Some(saving) => saving,
            None => {
                let written = self.journal.record_observed_run(&record).await;
                Box::pin(std::future::ready(written))
            }
        };
        log_outcome(rule, &record, started);
        Some(Finished {
            record,
            saving,
            journal: self.journal.clone(),
        })
    }

    /// One attempt: waits for a place in the script pool, then starts the clock.
    async fn run_attempt(
        &self,
        rule_set: &Arc<RuleSet>,
        rule: &Arc<Rule>,
        event: &Event,
        record: &mut RunRecord,
        replay: Vec<EffectRecord>,
        stops: &Stops<'_>,
    ) -> (Result<Dynamic, ScriptError>, Arc<RunEffects>) {
        let thread = self.pool.reserve().await;
        let deadline = Instant::now() + rule.timeout;
        record.started_at.get_or_insert_with(Utc::now);
        // Not waited for: written before the effects the attempt records.
        self.journal.queue_run(record);
        let effects = self.run_effects(rule_set, rule, event, record, replay, deadline);
        let effects = Arc::new(effects.with_event_commit(stops.commit.clone()));
        let thread = match thread {
            Ok(thread) => thread,
            Err(error) => return (Err(error), effects),
        };
        let job = ScriptJob {
            sandbox: rule_set.sandbox().clone(),
            ast: rule.action.ast.clone(),
            event: rule.action.event_paths.body_of(event),
            meta: run_meta(event, record),
            vars: self.vars.clone(),
            effects: effects.clone(),
            last_effects: rule.action.last_effects.clone(),
            deadline,
            cancel: stops.cancel.flag().clone(),
        };
        let result = thread.run(job).await;
        let result = last_effect::finish(result, &effects, rule_set.sandbox()).await;
        effects.release_answers();
        (result, effects)
    }

    fn run_effects(
        &self,
        rule_set: &RuleSet,
        rule: &Rule,
        event: &Event,
        record: &RunRecord,
        replay: Vec<EffectRecord>,
        deadline: Instant,
    ) -> RunEffects {
        let context = EffectContext {
            rule: rule.name.clone(),
            run_id: record.id.as_str().into(),
            deadline,
            http_hosts: rule.capabilities.http_hosts(),
            download_token: event.download_token().cloned(),
            zoom_account: ZoomAccountRef::for_run(rule.account.as_ref(), || {
                ZoomAccountRef::of_event(event)
            }),
        };
        let observer: Arc<dyn EffectObserver> = self.journal.clone();
        RunEffects::new(
            context,
            rule.capabilities.clone(),
            self.effects.clone(),
            tokio::runtime::Handle::current(),
        )
        .with_replay(replay)
        .with_observer(observer)
        .with_output_limits(rule_set.sandbox().limits().output_limits())
    }

    /// Writes the record of a failed attempt before its retry; its effects
    /// were each written as they completed (the journal is their observer).
    /// A failure is only logged: the run's next record replaces this one.
    async fn persist(&self, record: &RunRecord) {
        if let Err(error) = self.journal.record_observed_run(record).await {
            tracing::error!(run = %record.id, error = %error, "could not record run");
        }
    }
}

/// Sleeps before the next attempt; false when the run was cancelled meanwhile.
async fn wait_before_retry(delay: Duration, cancel: &CancelFlag) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => !cancel.is_cancelled(),
        _ = cancel.cancelled() => false,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effects::{EffectError, EffectRequest};
    use crate::engine::executor::new_record;
    use crate::journal::memory::MemoryJournal;
    use crate::rules::compile::rules_of_yaml;
    use crate::script::inline;
    use futures_util::future::BoxFuture;
    use serde_json::{Value, json};
    use tokio::sync::{Notify, Semaphore};

    /// Slack posts that answer (`answer`, or an error when it is `None`)
    /// only as the test lets them (`gate`), telling it when one started.
    struct HeldPosts {
        started: Notify,
        gate: Semaphore,
        answer: Option<Value>,
    }

    impl HeldPosts {
        fn new(answer: Option<Value>, open: bool) -> Arc<HeldPosts> {
            let permits = if open { Semaphore::MAX_PERMITS } else { 0 };
            Arc::new(HeldPosts {
                started: Notify::new(),
                gate: Semaphore::new(permits),
                answer,
            })
        }
    }

    impl Effects for HeldPosts {
        fn perform<'a>(
            &'a self,
            _context: &'a EffectContext,
            request: &'a EffectRequest,
        ) -> BoxFuture<'a, Result<Value, EffectError>> {
            Box::pin(async move {
                self.started.notify_one();
                self.gate.acquire().await.unwrap().forget();
                self.answer
                    .clone()
                    .ok_or_else(|| EffectError::permanent(&request.name, "channel_not_found"))
            })
        }
    }

    /// A runner of these rules on ONE script thread.
    fn runner(
        rules: &str,
        effects: Arc<HeldPosts>,
    ) -> (Arc<Runner>, Arc<RuleSet>, tempfile::TempDir) {
        let (rule_set, dir) = rules_of_yaml(rules);
        let rule_set = Arc::new(rule_set);
        let runner = Runner {
            journal: Arc::new(MemoryJournal::default()),
            effects,
            pool: Arc::new(ScriptPool::new(1, 16 * 1024 * 1024)),
            vars: Dynamic::from_map(rhai::Map::new()),
            retry_waits: RetryWaits::Skipped,
        };
        (Arc::new(runner), rule_set, dir)
    }

    /// Runs `rule` for one event, in a task of its own; its final record.
    fn run(
        runner: &Arc<Runner>,
        rule_set: &Arc<RuleSet>,
        rule: &str,
    ) -> tokio::task::JoinHandle<RunRecord> {
        let (runner, rule_set) = (runner.clone(), rule_set.clone());
        let rule = rule_set.rule(rule).unwrap().clone();
        tokio::spawn(async move {
            let body = json!({"event": "a.b", "event_ts": 1, "payload": {"n": 7}});
            let event = Event::from_value(&body, crate::event::Source::Test).unwrap();
            let run = Run {
                rule_set: &rule_set,
                rule: &rule,
                event: &event,
                record: new_record(&rule, &event, None),
                replay: Vec::new(),
                cancel: &CancelFlag::default(),
                commit: &EventCommit::committed(),
            };
            let finished = runner.execute(run).await.unwrap();
            finished.saved().await
        })
    }

    const POSTS_LAST: &str = "- name: posts\n  on: a.b\n  allow: [slack]\n  do: |\n    \
        let text = `run ${event.payload.n}`;\n    slack::post(\"#a\", text);\n\
        - name: posts-if\n  on: a.b\n  allow: [slack]\n  do: |\n    \
        if event.payload.n > 1 { slack::post(\"#a\", `run ${event.payload.n}`) }\n    \
        else { log::info(\"small\") }\n\
        - name: posts-and-keeps\n  on: a.b\n  allow: [slack]\n  do: |\n    \
        let answer = slack::post(\"#a\", `run ${event.payload.n}`);\n    answer\n\
        - name: adds\n  on: a.b\n  do: \"40 + 2\"\n";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_script_ending_with_a_post_frees_its_thread_before_the_answer() {
        for rule in ["posts", "posts-if"] {
            let answer = json!({"ok": true, "channel": "C1", "ts": "1.2"});
            let effects = HeldPosts::new(Some(answer.clone()), false);
            let (runner, rule_set, _dir) = runner(POSTS_LAST, effects.clone());
            let posting = run(&runner, &rule_set, rule);
            effects.started.notified().await;
            // The post is held; the one script thread runs another run meanwhile.
            let adding = run(&runner, &rule_set, "adds");
            let added = tokio::time::timeout(Duration::from_secs(5), adding).await;
            let added = added.expect("the script thread was free").unwrap();
            assert_eq!(added.output, Some(json!(42)));
            assert!(!posting.is_finished(), "{rule}: the run waits for its post");
            effects.gate.add_permits(1);
            let posted = posting.await.unwrap();
            assert_eq!(posted.status, RunStatus::Succeeded, "{:?}", posted.error);
            assert_eq!(posted.output, Some(answer.clone()), "the script's value");
            assert_eq!(posted.effects.len(), 1);
            assert_eq!(posted.effects[0].args["text"], "run 7");
            assert_eq!(posted.effects[0].result, Ok(answer));
        }
    }

    /// A run's effect records without their times.
    fn timeless(record: &RunRecord) -> Vec<EffectRecord> {
        let mut effects = record.effects.clone();
        for effect in &mut effects {
            (effect.started_at, effect.latency_ms) = (chrono::DateTime::UNIX_EPOCH, 0.0);
        }
        effects
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_post_left_to_the_run_ends_it_as_a_post_waited_for() {
        for answer in [
            Some(json!({"ok": true, "channel": "C1", "ts": "1.2"})),
            None,
        ] {
            let effects = HeldPosts::new(answer.clone(), true);
            let (runner, rule_set, _dir) = runner(POSTS_LAST, effects);
            let waited = run(&runner, &rule_set, "posts-and-keeps").await.unwrap();
            let left = run(&runner, &rule_set, "posts").await.unwrap();
            let left_in_if = run(&runner, &rule_set, "posts-if").await.unwrap();
            for left in [&left, &left_in_if] {
                assert_eq!(left.status, waited.status);
                assert_eq!(left.error, waited.error);
                assert_eq!(left.output, waited.output);
                assert_eq!(timeless(left), timeless(&waited));
            }
            match answer {
                Some(answer) => assert_eq!(left.output, Some(answer)),
                None => {
                    assert_eq!(left.status, RunStatus::Failed);
                    assert!(left.error.as_ref().unwrap().contains("channel_not_found"));
                }
            }
        }
    }

    /// Rules whose scripts may have to leave a runtime thread: they log
    /// (held there, unless too many lines), wait for an answer, read the
    /// clock, run long, or break a limit.
    const MAY_MOVE: &str = "- name: logs-then-posts\n  on: a.b\n  allow: [slack]\n  do: |\n    \
        log::info(\"hi\");\n    debug(\"d\");\n    log::warn(\"careful\");\n    \
        slack::post(\"#a\", \"x\");\n\
        - name: prints\n  on: a.b\n  do: |\n    print(\"p\");\n    1\n\
        - name: logs-then-throws\n  on: a.b\n  do: |\n    log::error(\"bad\");\n    \
        throw \"no\";\n\
        - name: logs-then-reads-the-clock\n  on: a.b\n  allow: [slack]\n  do: |\n    \
        log::info(\"before\");\n    let t = now();\n    slack::post(\"#a\", \"t\");\n\
        - name: logs-then-runs-long\n  on: a.b\n  allow: [slack]\n  do: |\n    \
        print(\"before\");\n    let s = 0;\n    for i in 0..100000 { s += i; }\n    \
        slack::post(\"#a\", `${s}`);\n\
        - name: logs-a-lot\n  on: a.b\n  allow: [slack]\n  do: |\n    \
        for i in 0..100 { log::info(`line ${i}`); }\n    slack::post(\"#a\", \"x\");\n\
        - name: reads-the-clock\n  on: a.b\n  allow: [slack]\n  do: |\n    \
        let t = now();\n    slack::post(\"#a\", \"t\");\n\
        - name: runs-long\n  on: a.b\n  allow: [slack]\n  do: |\n    \
        let s = 0;\n    for i in 0..100000 { s += i; }\n    slack::post(\"#a\", `${s}`);\n\
        - name: loops\n  on: a.b\n  do: \"loop {}\"\n\
        - name: bombs\n  on: a.b\n  do: |\n    let s = \"ab\";\n    loop { s += s; }\n\
        - name: recurses\n  on: a.b\n  do: |\n    fn f(n) { f(n + 1) }\n    f(0)\n";

    /// A runtime whose threads scripts may run on, as the daemon's.
    fn scripts_runtime() -> tokio::runtime::Runtime {
        inline::runtime_builder().worker_threads(2).build().unwrap()
    }

    /// What a run did, without its times: status, error (without the
    /// folder its rule file is in), output, effects (name, arguments,
    /// whether they succeeded) and log lines.
    fn outcome(record: &RunRecord) -> (RunStatus, Option<String>, Option<Value>, Vec<Value>) {
        let effects = record.effects.iter();
        let effects = effects.map(|e| json!([e.name, e.args, e.result.is_ok()]));
        let logs = record.logs.iter().map(|l| json!([l.level, l.message]));
        let done = effects.chain(logs).collect();
        let error = record.error.as_deref();
        let error = error.map(|e| e.rsplit_once("rules.yaml:").map_or(e, |(_, at)| at));
        (
            record.status,
            error.map(str::to_string),
            record.output.clone(),
            done,
        )
    }

    /// Runs `rule` once on `runtime`: what it did, and how many jobs went
    /// to the script thread.
    fn outcome_on(
        runtime: &tokio::runtime::Runtime,
        rules: &str,
        rule: &str,
    ) -> (RunRecord, usize) {
        runtime.block_on(async {
            let answer = json!({"ok": true, "channel": "C1", "ts": "1.2"});
            let (runner, rule_set, _dir) = runner(rules, HeldPosts::new(Some(answer), true));
            let record = run(&runner, &rule_set, rule).await.unwrap();
            (record, runner.pool.jobs_sent())
        })
    }

    #[test]
    fn runs_on_runtime_threads_end_as_on_a_script_thread_and_move_when_they_must() {
        let rules = format!("{POSTS_LAST}{MAY_MOVE}");
        let (on_runtime, on_pool) = (scripts_runtime(), tokio::runtime::Runtime::new().unwrap());
        // Too few operations to read the clock: they cannot run out of time.
        // Log lines are held until the run stays (or ends) there.
        let staying = [
            "posts",
            "posts-if",
            "adds",
            "logs-then-posts",
            "prints",
            "logs-then-throws",
        ];
        let moving = [
            "posts-and-keeps",
            "reads-the-clock",
            "runs-long",
            "loops",
            "logs-then-reads-the-clock",
            "logs-then-runs-long",
            "logs-a-lot",
        ];
        // A limit broken at once ends the run where it is (unless the thread
        // was held up past the time a run may stay there).
        let failing = ["loops", "bombs", "recurses", "logs-then-throws"];
        for rule in staying.iter().chain(&moving).chain(&["bombs", "recurses"]) {
            let (inline, sent) = outcome_on(&on_runtime, &rules, rule);
            let (pooled, pooled_sent) = outcome_on(&on_pool, &rules, rule);
            assert_eq!(outcome(&inline), outcome(&pooled), "{rule}");
            assert_eq!(
                pooled_sent, 1,
                "{rule}: a plain runtime's threads run no script"
            );
            if staying.contains(rule) || moving.contains(rule) {
                let expected = usize::from(moving.contains(rule));
                assert_eq!(sent, expected, "{rule}: jobs sent to the script thread");
            }
            let failed = failing.contains(rule);
            assert_eq!(
                inline.status == RunStatus::Failed,
                failed,
                "{rule}: {:?}",
                inline.error
            );
        }
        // Each effect and log line once, in order, moved or not; a held line
        // keeps the time it was written, before the post it came before.
        let (logged, _) = outcome_on(&on_runtime, &rules, "logs-then-posts");
        let levels: Vec<_> = logged.logs.iter().map(|l| l.level.as_str()).collect();
        assert_eq!(
            (levels, logged.effects.len()),
            (vec!["info", "debug", "warn"], 1)
        );
        assert!(logged.logs[2].at <= logged.effects[0].started_at);
        for rule in ["logs-then-reads-the-clock", "logs-then-runs-long"] {
            let (moved, _) = outcome_on(&on_runtime, &rules, rule);
            assert_eq!(moved.logs.len(), 1, "{rule}");
        }
        let (many, _) = outcome_on(&on_runtime, &rules, "logs-a-lot");
        let lines: Vec<_> = many.logs.iter().map(|l| l.message.clone()).collect();
        assert_eq!(
            lines,
            (0..100).map(|i| format!("line {i}")).collect::<Vec<_>>()
        );
        let (long, _) = outcome_on(&on_runtime, &rules, "runs-long");
        assert_eq!(long.effects[0].args["text"], "4999950000");
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_before_a_retry_lasts_the_backoff() {
        let cancel = CancelFlag::default();
        let started = tokio::time::Instant::now();
        assert!(wait_before_retry(Duration::from_secs(300), &cancel).await);
        assert_eq!(started.elapsed(), Duration::from_secs(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_run_stops_waiting_to_retry_at_once() {
        let cancel = CancelFlag::default();
        let started = tokio::time::Instant::now();
        let waiting = tokio::spawn({
            let cancel = cancel.clone();
            async move { wait_before_retry(Duration::from_secs(300), &cancel).await }
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        cancel.cancel();
        assert!(!waiting.await.unwrap(), "cancelled");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
