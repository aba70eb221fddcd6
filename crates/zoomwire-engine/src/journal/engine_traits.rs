//! [`SqliteJournal`]'s implementations of the engine's traits: [`Journal`]
//! (events and runs), [`EffectObserver`] (each effect as it starts and
//! completes) and [`StateStore`] (rule state).
//!
//! Event intake and run records are async and share the writer's batches.
//! State writes come from sandbox threads and block them until their commit.
//! Effect start marks are awaited on the runtime by the task that then
//! performs the effect (the sandbox thread waits once, for the answer). An effect's record is written while the script
//! goes on; the run's next effect waits until it is on disk (and is refused
//! when it could not be written), so a crash leaves at most the one effect
//! in flight unknown, and a resumed run replays the others instead of
//! performing them again.

use std::time::Duration;

use chrono::Utc;
use futures_util::future::BoxFuture;
use serde_json::Value;

use super::codec::{duration_nanos, to_json, to_nanos};
use super::ops::{EventRow, Op, Outcome};
use super::writer::Haste;
use super::{SqliteJournal, query, unexpected};
use crate::effects::gateway::{EffectObserver, EffectRecord, EffectStart, SavedWait, StartMark};
use crate::effects::state::{StateError, StateStore};
use crate::engine::journal::{
    DetachedAccept, EarlyAccepts, Journal, JournalError, RunRecord, RunSaving, UnfinishedRun,
};
use crate::event::Event;

impl SqliteJournal {
    /// Ends a run that cannot resume, so it shows as dead instead of vanishing.
    async fn give_up(&self, run: &RunRecord, reason: &str) -> Result<(), JournalError> {
        let error = format!("cannot resume after a restart: {reason}");
        tracing::error!(run = %run.id, rule = %run.rule, error = %error, "run marked dead");
        let op = Op::MarkDead {
            id: run.id.clone(),
            error,
        };
        self.inner.writer.submit(op).await.map(|_| ())
    }
}

/// The write of an effect's start mark.
fn effect_start_op(run_id: &str, start: &EffectStart) -> Op {
    Op::EffectStart {
        run_id: run_id.to_string(),
        start: Box::new(start.clone()),
    }
}

impl EffectObserver for SqliteJournal {
    /// Durable on `Ok`: blocks the sandbox thread until the mark is committed.
    fn effect_starting(&self, run_id: &str, start: &EffectStart) -> Result<(), String> {
        let op = effect_start_op(run_id, start);
        self.inner
            .writer
            .submit_blocking(op)
            .map(|_| ())
            .map_err(|error| error.0)
    }

    /// Durable once the future resolves `Ok`: queued (in order after the
    /// run's earlier writes) when first polled, like any awaited write.
    fn effect_starting_async(&self, run_id: &str, start: &EffectStart) -> Option<StartMark> {
        let op = effect_start_op(run_id, start);
        let inner = self.inner.clone();
        Some(Box::pin(async move {
            inner
                .writer
                .submit(op)
                .await
                .map(|_| ())
                .map_err(|error| error.0)
        }))
    }

    /// Its marks are awaited on the runtime (`effect_starting_async`).
    fn marks_without_blocking(&self) -> bool {
        true
    }

    /// Durable on return: blocks the sandbox thread until the record is committed.
    fn effect_completed(&self, run_id: &str, record: &EffectRecord) {
        // A failed write is logged by the wait; a caller that waits here has no
        // next effect of its own to refuse.
        let _ = self.effect_completed_later(run_id, record)();
    }

    fn effect_completed_later(&self, run_id: &str, record: &EffectRecord) -> SavedWait {
        let op = Op::Effect {
            run_id: run_id.to_string(),
            record: Box::new(record.clone()),
        };
        let saving = self.inner.writer.submit_deferred(op);
        let (run_id, name, seq) = (run_id.to_string(), record.name.clone(), record.seq);
        Box::new(move || {
            saving
                .and_then(|commit| commit.wait())
                .map(|_| ())
                .map_err(|error| {
                    metrics::counter!("zoomwire_journal_errors_total").increment(1);
                    tracing::error!(
                        run = %run_id, effect = %name, seq, error = %error,
                        "effect record not saved: the run makes no further effect"
                    );
                    error.to_string()
                })
        })
    }
}

impl Journal for SqliteJournal {
    fn accept_event_with_runs<'a>(
        &'a self,
        event: &'a Event,
        runs: &'a [RunRecord],
    ) -> BoxFuture<'a, Result<bool, JournalError>> {
        let op = Op::Accept {
            event: EventRow::new(event),
            runs: runs.to_vec(),
        };
        Box::pin(async move { accepted(self.inner.writer.submit(op).await) })
    }

    /// One writer request for the batch, answered with one wake-up.
    fn accept_events_with_runs<'a>(
        &'a self,
        events: &'a [(&'a Event, &'a [RunRecord])],
    ) -> BoxFuture<'a, Vec<Result<bool, JournalError>>> {
        let ops = accept_ops(events);
        Box::pin(async move {
            let answers = self.inner.writer.submit_all(ops).await;
            answers.into_iter().map(accepted).collect()
        })
    }

    /// Answered on the writer's thread: the caller is not woken. Unless a
    /// source waits for them, the events may wait for the next commit
    /// somebody waits for ([`super::JournalOptions::may_wait`]).
    fn accept_events_detached<'a>(
        &'a self,
        events: &'a [&'a Event],
        done: DetachedAccept,
    ) -> BoxFuture<'a, ()> {
        // A source that answers only once an event is journaled (the webhook) is waiting.
        let haste = if events.iter().any(|event| event.awaits_journal()) {
            Haste::Now
        } else {
            Haste::MayWait
        };
        let events: Vec<(&Event, &[RunRecord])> = events.iter().map(|e| (*e, &[][..])).collect();
        let ops = accept_ops(&events);
        let answered = Box::new(move |answers: Vec<Result<Outcome, JournalError>>| {
            done(answers.into_iter().map(accepted).collect())
        });
        Box::pin(self.inner.writer.submit_all_detached(ops, haste, answered))
    }

    fn answers_detached(&self) -> bool {
        true
    }

    /// Answered once the batch's statements ran, and again once committed.
    /// A batch without runs has nobody to start early: it is answered once,
    /// after the commit, which saves its caller a wake-up (most events start
    /// no run).
    fn accept_events_early<'a>(
        &'a self,
        events: &'a [(&'a Event, &'a [RunRecord])],
    ) -> BoxFuture<'a, EarlyAccepts> {
        let ops = accept_ops(events);
        Box::pin(async move {
            if events.iter().all(|(_, runs)| runs.is_empty()) {
                let answers = self.inner.writer.submit_all(ops).await;
                return EarlyAccepts::after_commit(answers.into_iter().map(accepted).collect());
            }
            let early = self.inner.writer.submit_all_early(ops).await;
            let executed = early.executed.into_iter().map(executed).collect();
            let (inner, count) = (self.inner.clone(), events.len());
            let committed = Box::pin(async move {
                let answers = early.committed.await.unwrap_or_default();
                let answers = inner.writer.answers(count, answers);
                answers.into_iter().map(accepted).collect()
            });
            EarlyAccepts {
                executed,
                commits: early.commits,
                committed,
            }
        })
    }

    fn record_run<'a>(&'a self, run: &'a RunRecord) -> BoxFuture<'a, Result<(), JournalError>> {
        let op = Op::RecordRun(Box::new(run.clone()));
        Box::pin(async move { self.inner.writer.submit(op).await.map(|_| ()) })
    }

    fn queue_run(&self, run: &RunRecord) {
        // Only fails when the writer has stopped, which the next awaited write reports.
        let _ = self
            .inner
            .writer
            .submit_queued(Op::RecordRun(Box::new(run.clone())));
    }

    /// The run's row and logs: its effects are stored as they complete.
    fn record_observed_run<'a>(
        &'a self,
        run: &'a RunRecord,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        let op = Op::RecordObservedRun(Box::new(run.clone()));
        Box::pin(async move { self.inner.writer.submit(op).await.map(|_| ()) })
    }

    /// Queued at once: the writer keeps the order of what it is given.
    fn queue_observed_run(&self, run: &RunRecord) -> Option<RunSaving> {
        let op = Op::RecordObservedRun(Box::new(run.clone()));
        let commit = self.inner.writer.submit_now(op);
        Some(Box::pin(async move { commit.await.map(|_| ()) }))
    }

    fn unfinished_runs(&self) -> BoxFuture<'_, Result<Vec<UnfinishedRun>, JournalError>> {
        Box::pin(async move {
            let (seal, events) = (&self.inner.seal, &self.inner.events);
            let stored = self
                .inner
                .readers
                .with(|conn| query::unfinished_runs(conn, events, seal))?;
            self.resumable(stored).await
        })
    }

    fn unfinished_run_ids(&self) -> BoxFuture<'_, Result<Vec<String>, JournalError>> {
        Box::pin(async move { self.inner.readers.with(query::unfinished_run_ids) })
    }

    fn unfinished_runs_among<'a>(
        &'a self,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<UnfinishedRun>, JournalError>> {
        Box::pin(async move {
            let (seal, events) = (&self.inner.seal, &self.inner.events);
            let stored = self
                .inner
                .readers
                .with(|conn| query::unfinished_runs_among(conn, events, seal, ids))?;
            self.resumable(stored).await
        })
    }

    fn keeps_events(&self) -> bool {
        true
    }

    fn stored_event<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Event>, JournalError>> {
        Box::pin(async move { self.get_event(id) })
    }
}

/// One [`Op::Accept`] per event, with its runs.
fn accept_ops(events: &[(&Event, &[RunRecord])]) -> Vec<Op> {
    let rows = EventRow::batch(events.iter().map(|(event, _)| *event));
    rows.into_iter()
        .zip(events)
        .map(|(event, (_, runs))| Op::Accept {
            event,
            runs: runs.to_vec(),
        })
        .collect()
}

/// The writer's answer to an [`Op::Accept`]: fresh, or a duplicate (counted).
fn accepted(answer: Result<Outcome, JournalError>) -> Result<bool, JournalError> {
    match answer? {
        Outcome::Accepted(true) => Ok(true),
        Outcome::Accepted(false) => {
            metrics::counter!("zoomwire_events_duplicate_total").increment(1);
            Ok(false)
        }
        other => Err(unexpected(&other)),
    }
}

/// The writer's executed answer to an [`Op::Accept`] (a duplicate is counted once committed).
fn executed(answer: Result<Outcome, JournalError>) -> Result<bool, JournalError> {
    match answer? {
        Outcome::Accepted(fresh) => Ok(fresh),
        other => Err(unexpected(&other)),
    }
}

impl SqliteJournal {
    /// Unfinished runs as read, with their events opened; a run whose event
    /// cannot be had is given up (marked dead).
    async fn resumable(
        &self,
        stored: Vec<query::StoredUnfinished>,
    ) -> Result<Vec<UnfinishedRun>, JournalError> {
        let seal = &self.inner.seal;
        let mut unfinished = Vec::with_capacity(stored.len());
        for (run, in_doubt, event) in stored {
            match event.map(|event| event.into_event(seal)) {
                Some(Ok(event)) => unfinished.push(UnfinishedRun {
                    run,
                    event,
                    in_doubt,
                }),
                Some(Err(error)) => self.give_up(&run, &error.0).await?,
                None => {
                    self.give_up(&run, "its event is no longer in the store")
                        .await?
                }
            }
        }
        Ok(unfinished)
    }
}

impl StateStore for SqliteJournal {
    fn get(&self, rule: &str, key: &str) -> Result<Option<Value>, StateError> {
        let now = to_nanos(Utc::now());
        self.inner
            .readers
            .with(|conn| query::state_value(conn, rule, key, now))
            .map_err(|e| StateError::Store(e.0))
    }

    /// Durable on return, like effect records.
    fn set(
        &self,
        rule: &str,
        key: &str,
        value: Value,
        ttl: Option<Duration>,
    ) -> Result<(), StateError> {
        let expires_at = ttl.map(|ttl| to_nanos(Utc::now()).saturating_add(duration_nanos(ttl)));
        let max_keys = self.inner.options.max_state_keys;
        let op = Op::StateSet {
            rule: rule.to_string(),
            key: key.to_string(),
            value: to_json(&value),
            expires_at,
            max_keys,
        };
        match self.inner.writer.submit_blocking(op) {
            Ok(Outcome::StateFull) => Err(StateError::Full {
                rule: rule.to_string(),
                max_keys,
            }),
            Ok(_) => Ok(()),
            Err(e) => Err(StateError::Store(e.0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Source;
    use crate::journal::JournalOptions;
    use metrics::{
        Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    /// Counts counters by name, for one thread.
    #[derive(Default)]
    struct Counters(Mutex<HashMap<String, Arc<AtomicU64>>>);

    impl Counters {
        fn get(&self, name: &str) -> u64 {
            let counters = self.0.lock().unwrap();
            counters.get(name).map_or(0, |c| c.load(Ordering::Relaxed))
        }
    }

    impl Recorder for Counters {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let mut counters = self.0.lock().unwrap();
            let counter = counters.entry(key.name().to_string()).or_default();
            Counter::from_arc(counter.clone())
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    fn options() -> JournalOptions {
        JournalOptions {
            prune_interval: None,
            ..JournalOptions::default()
        }
    }

    #[test]
    fn duplicates_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let journal = SqliteJournal::open(dir.path(), options()).unwrap();
        let event = Event::parse(
            include_str!("../../../../examples/events/meeting.ended.json"),
            Source::Fire,
        )
        .unwrap();
        let counters = Counters::default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let answers = metrics::with_local_recorder(&counters, || {
            runtime.block_on(async {
                let mut answers = Vec::new();
                for _ in 0..3 {
                    answers.push(journal.accept_event(&event).await.unwrap());
                }
                answers
            })
        });
        assert_eq!(answers, vec![true, false, false]);
        assert_eq!(counters.get("zoomwire_events_duplicate_total"), 2);
    }

    /// Early answers are for runs to start before the commit: a batch
    /// without runs is answered once, after it, and one with runs twice.
    #[test]
    fn only_a_batch_with_runs_is_answered_before_its_commit() {
        use crate::engine::journal::{RunRecord, RunStatus};
        let dir = tempfile::tempdir().unwrap();
        let journal = SqliteJournal::open(dir.path(), options()).unwrap();
        let event = |ts: u32| {
            let body = format!(r#"{{"event":"a.b","event_ts":{ts}}}"#);
            Event::parse(&body, Source::Fire).unwrap()
        };
        let (first, second, third) = (event(1), event(2), event(3));
        let run = [RunRecord::for_test(
            "r1",
            "rule",
            &third.id,
            "a.b",
            RunStatus::Pending,
        )];
        let counters = Counters::default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        metrics::with_local_recorder(&counters, || {
            runtime.block_on(async {
                let without_runs = [(&first, &[][..]), (&second, &[][..]), (&first, &[][..])];
                let answers = journal.accept_events_early(&without_runs).await;
                assert!(answers.commits.iter().all(|c| !c.is_awaited()));
                let executed: Vec<_> = answers
                    .executed
                    .iter()
                    .map(|a| *a.as_ref().unwrap())
                    .collect();
                assert_eq!(executed, [true, true, false]);
                let committed: Vec<_> = answers
                    .committed
                    .await
                    .into_iter()
                    .map(Result::unwrap)
                    .collect();
                assert_eq!(committed, executed);

                let with_a_run = [(&third, &run[..])];
                let answers = journal.accept_events_early(&with_a_run).await;
                assert!(answers.commits[0].is_awaited());
                assert!(answers.commits[0].wait().await.is_ok());
                assert!(answers.committed.await[0].as_ref().unwrap());
            })
        });
        // The duplicate is counted once, though it was answered twice.
        assert_eq!(counters.get("zoomwire_events_duplicate_total"), 1);
    }

    /// Events nobody waits for wait for a commit somebody waits for; an
    /// event whose source waits (the webhook's) is committed at once.
    #[test]
    fn only_events_nobody_waits_for_wait_for_company() {
        let dir = tempfile::tempdir().unwrap();
        let options = JournalOptions {
            may_wait: Duration::from_secs(3600),
            ..options()
        };
        let journal = SqliteJournal::open(dir.path(), options).unwrap();
        let event = |ts: u32| {
            let body = format!(r#"{{"event":"a.b","event_ts":{ts}}}"#);
            Event::parse(&body, Source::Test).unwrap()
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (sender, answered) = std::sync::mpsc::sync_channel(2);
        let done = |name: &'static str| -> crate::engine::journal::DetachedAccept {
            let sender = sender.clone();
            Box::new(move |answers: Vec<Result<bool, JournalError>>| {
                let _ = sender.send((name, answers));
            })
        };
        let unwaited = event(1);
        runtime.block_on(journal.accept_events_detached(&[&unwaited], done("unwaited")));
        let wait = Duration::from_millis(300);
        assert!(answered.recv_timeout(wait).is_err(), "committed alone");

        // The webhook's event is committed at once, and the other with it.
        let (waited, receipt) = event(2).with_receipt();
        runtime.block_on(journal.accept_events_detached(&[&waited], done("waited")));
        let mut names: Vec<_> = (0..2)
            .map(|_| answered.recv_timeout(Duration::from_secs(10)).unwrap())
            .map(|(name, answers)| {
                assert_eq!(answers.len(), 1);
                assert!(*answers[0].as_ref().unwrap(), "{name} is new");
                name
            })
            .collect();
        names.sort();
        assert_eq!(names, ["unwaited", "waited"]);
        drop(receipt);
    }

    #[test]
    fn a_queued_run_record_is_written_before_what_is_written_after_it() {
        use crate::engine::journal::{RunRecord, RunStatus};
        let dir = tempfile::tempdir().unwrap();
        let journal = SqliteJournal::open(dir.path(), options()).unwrap();
        let event = Event::parse(r#"{"event":"a.b","event_ts":1}"#, Source::Fire).unwrap();
        let pending =
            |id: &str| RunRecord::for_test(id, "rule", &event.id, "a.b", RunStatus::Pending);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let runs = [pending("r1"), pending("r2")];
        assert!(
            runtime
                .block_on(journal.accept_event_with_runs(&event, &runs))
                .unwrap()
        );
        let finished = RunRecord {
            status: RunStatus::Succeeded,
            finished_at: Some(chrono::Utc::now()),
            ..pending("r1")
        };
        let saving = journal.queue_observed_run(&finished).expect("queued");
        // Not waited for: the next write's commit covers it.
        runtime
            .block_on(journal.record_run(&RunRecord {
                status: RunStatus::Running,
                ..pending("r2")
            }))
            .unwrap();
        let unfinished = runtime.block_on(journal.unfinished_run_ids()).unwrap();
        assert_eq!(unfinished, ["r2"], "r1's last record is written");
        runtime.block_on(saving).unwrap();
    }

    #[test]
    fn a_batch_is_one_request_answered_per_event_in_order() {
        use crate::engine::journal::{RunRecord, RunStatus};
        let dir = tempfile::tempdir().unwrap();
        let journal = SqliteJournal::open(dir.path(), options()).unwrap();
        let event = |n: u32| {
            Event::parse(
                &format!(r#"{{"event":"a.b","event_ts":{n}}}"#),
                Source::Fire,
            )
            .unwrap()
        };
        let (first, second) = (event(1), event(2));
        let run = RunRecord::for_test("r1", "rule", &first.id, "a.b", RunStatus::Pending);
        let runs = [run];
        let batch = [(&first, &runs[..]), (&second, &[][..]), (&first, &runs[..])];
        let jobs_before = journal
            .inner
            .writer
            .counters
            .jobs
            .load(std::sync::atomic::Ordering::Relaxed);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let answers = runtime.block_on(journal.accept_events_with_runs(&batch));
        let answers: Vec<bool> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!(answers, [true, true, false], "the repeat is a duplicate");
        let jobs = journal
            .inner
            .writer
            .counters
            .jobs
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            jobs - jobs_before,
            3,
            "one job per event, each all or nothing"
        );
        let unfinished = runtime.block_on(journal.unfinished_runs()).unwrap();
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].event.id, first.id);
        assert!(journal.get_event(&second.id).unwrap().is_some());
    }

    /// A store holding one event and its run `r1`, running, with a runtime
    /// to await the store on.
    fn a_running_run() -> (
        tempfile::TempDir,
        SqliteJournal,
        crate::engine::journal::RunRecord,
        tokio::runtime::Runtime,
    ) {
        use crate::engine::journal::{RunRecord, RunStatus};
        let dir = tempfile::tempdir().unwrap();
        let journal = SqliteJournal::open(dir.path(), options()).unwrap();
        let event = Event::parse(r#"{"event":"a.b","event_ts":1}"#, Source::Fire).unwrap();
        let run = RunRecord {
            started_at: Some(Utc::now()),
            ..RunRecord::for_test("r1", "rule", &event.id, "a.b", RunStatus::Running)
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let accepted = runtime
            .block_on(journal.accept_event_with_runs(&event, std::slice::from_ref(&run)))
            .unwrap();
        assert!(accepted);
        (dir, journal, run, runtime)
    }

    /// Effects marked as started and not yet recorded, in the whole store.
    fn marks_left(journal: &SqliteJournal) -> i64 {
        let count = "SELECT count(*) FROM effect_starts";
        journal
            .inner
            .readers
            .with(|conn| Ok(conn.query_row(count, [], |r| r.get(0))?))
            .unwrap()
    }

    #[test]
    fn an_effect_started_and_never_recorded_comes_back_in_doubt_until_recorded() {
        use crate::effects::gateway::EffectStart;
        use crate::engine::journal::RunStatus;
        let (_dir, journal, mut run, runtime) = a_running_run();
        let start = |seq| EffectStart {
            seq,
            name: "slack.post".into(),
            args: serde_json::json!({"channel": "#a", "text": seq}),
            started_at: Utc::now(),
        };
        // Effect 1 started and done; effect 2 started when the crash came.
        journal.effect_starting("r1", &start(1)).unwrap();
        let mut done = start(1).into_in_doubt_record();
        (done.result, done.in_doubt) = (Ok(serde_json::json!({"ok": true})), false);
        journal.effect_completed("r1", &done);
        journal.effect_starting("r1", &start(2)).unwrap();
        let unfinished = runtime.block_on(journal.unfinished_runs()).unwrap();
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].run.effects.len(), 1, "effect 1 is replayed");
        assert_eq!(
            unfinished[0].in_doubt,
            vec![start(2)]
                .into_iter()
                .map(|mut s| {
                    s.started_at = unfinished[0].in_doubt[0].started_at;
                    s
                })
                .collect::<Vec<_>>()
        );
        // Recorded in doubt with the run: the mark is gone, the record says so.
        run.effects = vec![done, start(2).into_in_doubt_record()];
        run.status = RunStatus::Dead;
        run.finished_at = Some(Utc::now());
        runtime.block_on(journal.record_run(&run)).unwrap();
        assert!(
            runtime
                .block_on(journal.unfinished_runs())
                .unwrap()
                .is_empty()
        );
        let stored = journal.get_run("r1").unwrap().unwrap().run;
        assert!(!stored.effects[0].in_doubt);
        assert!(stored.effects[1].in_doubt);
        let error = stored.effects[1].result.as_ref().unwrap_err();
        assert_eq!(error.kind, crate::effects::EffectErrorKind::InDoubt);
        assert_eq!(marks_left(&journal), 0);
    }

    #[test]
    fn a_finished_runs_end_writes_the_record_of_an_effect_whose_own_write_failed() {
        use crate::effects::gateway::EffectStart;
        use crate::engine::journal::RunStatus;
        let (_dir, journal, mut run, runtime) = a_running_run();
        let start = EffectStart {
            seq: 1,
            name: "slack.post".into(),
            args: serde_json::json!({"channel": "#a", "text": "hi"}),
            started_at: Utc::now(),
        };
        // The post was made; its record never reached the store (a full disk).
        journal.effect_starting("r1", &start).unwrap();
        let mut made = start.clone().into_in_doubt_record();
        (made.result, made.in_doubt) = (Ok(serde_json::json!({"ok": true})), false);
        // A later attempt replayed it: it is written as made.
        made.replayed = true;
        let unfinished = runtime.block_on(journal.unfinished_runs()).unwrap();
        assert_eq!(unfinished[0].in_doubt.len(), 1, "a crash now: in doubt");
        // The run's end, written as the executor writes it: without its effects.
        run.effects = vec![made];
        run.status = RunStatus::Succeeded;
        run.finished_at = Some(Utc::now());
        runtime.block_on(journal.record_observed_run(&run)).unwrap();
        let stored = journal.get_run("r1").unwrap().unwrap().run;
        assert_eq!(stored.status, RunStatus::Succeeded);
        assert_eq!(stored.effects.len(), 1, "{stored:?}");
        let effect = &stored.effects[0];
        assert!(effect.result.is_ok() && !effect.in_doubt && !effect.replayed);
        assert_eq!(marks_left(&journal), 0, "no mark left to read as in doubt");
    }

    #[test]
    fn state_is_kept_per_rule_and_forgotten_after_its_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let journal = SqliteJournal::open(dir.path(), options()).unwrap();
        let state: &dyn StateStore = &journal;
        state
            .set("a", "k", serde_json::json!({"n": 1}), None)
            .unwrap();
        state
            .set("b", "k", serde_json::json!(2), Some(Duration::ZERO))
            .unwrap();
        state
            .set(
                "b",
                "kept",
                serde_json::json!(3),
                Some(Duration::from_secs(3600)),
            )
            .unwrap();
        assert_eq!(
            state.get("a", "k").unwrap(),
            Some(serde_json::json!({"n": 1}))
        );
        assert_eq!(state.get("b", "k").unwrap(), None);
        assert_eq!(state.get("b", "kept").unwrap(), Some(serde_json::json!(3)));
        assert_eq!(state.get("a", "other").unwrap(), None);
    }

    #[test]
    fn a_rule_holds_at_most_its_cap_of_live_state_keys() {
        let dir = tempfile::tempdir().unwrap();
        let journal = SqliteJournal::open(
            dir.path(),
            JournalOptions {
                max_state_keys: 2,
                ..options()
            },
        )
        .unwrap();
        let state: &dyn StateStore = &journal;
        let one = serde_json::json!(1);
        state.set("a", "k1", one.clone(), None).unwrap();
        state
            .set("a", "k2", one.clone(), Some(Duration::from_secs(3600)))
            .unwrap();
        let error = state.set("a", "k3", one.clone(), None).unwrap_err();
        assert!(
            matches!(error, StateError::Full { max_keys: 2, .. }),
            "{error}"
        );
        assert_eq!(state.get("a", "k3").unwrap(), None, "nothing written");
        state.set("a", "k1", serde_json::json!(2), None).unwrap();
        state.set("b", "k3", one.clone(), None).unwrap();
        // An expired key frees its place before pruning removes it.
        state
            .set("a", "k2", one.clone(), Some(Duration::ZERO))
            .unwrap();
        state.set("a", "k3", one, None).unwrap();
    }

    #[test]
    fn the_store_size_counts_the_log_too() {
        let dir = tempfile::tempdir().unwrap();
        let journal = SqliteJournal::open(dir.path(), options()).unwrap();
        let db = std::fs::metadata(journal.path()).unwrap().len();
        let wal = std::fs::metadata(dir.path().join("zoomwire.db-wal")).map_or(0, |m| m.len());
        assert_eq!(super::super::store_size(journal.path()), db + wal);
        assert!(db > 0);
    }

    #[test]
    fn unfinished_runs_among_reads_only_the_named_runs_still_unfinished() {
        use crate::engine::journal::{RunRecord, RunStatus};
        let dir = tempfile::tempdir().unwrap();
        let journal = SqliteJournal::open(dir.path(), options()).unwrap();
        let event = Event::parse(r#"{"event":"a.b","event_ts":1}"#, Source::Fire).unwrap();
        let run = |id: &str| RunRecord::for_test(id, "rule", &event.id, "a.b", RunStatus::Pending);
        let runs = [run("r1"), run("r2"), run("r3")];
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let ids = |runs: Vec<UnfinishedRun>| runs.into_iter().map(|r| r.run.id).collect::<Vec<_>>();
        runtime.block_on(async {
            assert!(journal.accept_event_with_runs(&event, &runs).await.unwrap());
            let mut finished = run("r2");
            (finished.status, finished.finished_at) = (RunStatus::Succeeded, Some(Utc::now()));
            journal.record_run(&finished).await.unwrap();
            let wanted = ["r3", "r2", "r9"].map(String::from);
            let among = journal.unfinished_runs_among(&wanted).await.unwrap();
            assert_eq!(
                ids(among),
                ["r3"],
                "r2 is finished, r9 unknown, r1 not asked for"
            );
            let all = journal.unfinished_runs().await.unwrap();
            assert_eq!(ids(all), ["r1", "r3"]);
            let among = journal.unfinished_runs_among(&[]).await.unwrap();
            assert!(among.is_empty());
        });
    }

    #[test]
    fn unfinished_runs_are_those_pending_running_or_waiting_for_a_retry() {
        use crate::engine::journal::{RunRecord, RunStatus};
        let dir = tempfile::tempdir().unwrap();
        let journal = SqliteJournal::open(dir.path(), options()).unwrap();
        let event = Event::parse(r#"{"event":"a.b","event_ts":1}"#, Source::Fire).unwrap();
        let run = |id: &str, status: RunStatus, finished: bool| {
            let mut run = RunRecord::for_test(id, "rule", &event.id, "a.b", status);
            run.finished_at = finished.then(Utc::now);
            run
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut ids = runtime.block_on(async {
            let pending = [run("r1", RunStatus::Pending, false)];
            assert!(
                journal
                    .accept_event_with_runs(&event, &pending)
                    .await
                    .unwrap()
            );
            for record in [
                run("r2", RunStatus::Running, false),
                run("r3", RunStatus::Failed, false),
                run("r4", RunStatus::Failed, true),
                run("r5", RunStatus::Dead, true),
                run("r6", RunStatus::Succeeded, true),
            ] {
                journal.record_run(&record).await.unwrap();
            }
            journal.unfinished_run_ids().await.unwrap()
        });
        ids.sort();
        assert_eq!(
            ids,
            ["r1", "r2", "r3"],
            "r3 waits for a retry; r4 failed for good"
        );
        let read = |ids: Vec<UnfinishedRun>| ids.into_iter().map(|r| r.run.id).collect::<Vec<_>>();
        let mut all = read(runtime.block_on(journal.unfinished_runs()).unwrap());
        all.sort();
        assert_eq!(all, ["r1", "r2", "r3"]);
        runtime
            .block_on(journal.record_run(&run("r3", RunStatus::Failed, true)))
            .unwrap();
        let mut ids = runtime.block_on(journal.unfinished_run_ids()).unwrap();
        ids.sort();
        assert_eq!(ids, ["r1", "r2"], "r3 has failed for good now");
        // The failed runs are found through `runs_retrying`, not each read.
        let conn = rusqlite::Connection::open(journal.path()).unwrap();
        let sql = format!(
            "EXPLAIN QUERY PLAN {}",
            super::super::query::select_unfinished("id")
        );
        let plan: Vec<String> = conn
            .prepare(&sql)
            .unwrap()
            .query_map([], |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|step| step == "SCAN runs USING INDEX runs_retrying"),
            "{plan:?}"
        );
    }

    /// How long a pruning pass takes with a store past its event budget
    /// (`ZW_PRUNE_EVENTS` events, default 300,000, budget 250,000): the
    /// pass's time and how many writer commits it made.
    #[test]
    #[ignore = "a measuring harness, not a test"]
    fn prune_budget_harness() {
        let held: u64 = std::env::var("ZW_PRUNE_EVENTS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(300_000);
        let dir = tempfile::tempdir().unwrap();
        let journal = SqliteJournal::open(
            dir.path(),
            JournalOptions {
                sync: crate::journal::JournalSync::Normal,
                max_events: 250_000,
                ..options()
            },
        )
        .unwrap();
        // About the size of a Zoom event's body; without an identity, so its id is its hash.
        let pad = "x".repeat(700);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut n = 0;
            while n < held {
                let batch: Vec<_> = (n..(n + 1_000).min(held))
                    .map(|i| {
                        let body = format!(
                            r#"{{"event":"bench.pad","event_ts":{i},"payload":{{"pad":"{pad}"}}}}"#
                        );
                        let event = Event::parse(&body, Source::Fire).unwrap();
                        let journal = journal.clone();
                        async move { journal.accept_event(&event).await.unwrap() }
                    })
                    .collect();
                futures_util::future::join_all(batch).await;
                n += 1_000;
            }
        });
        assert_eq!(journal.counts().unwrap().events, held);
        let before = journal.stats();
        let started = std::time::Instant::now();
        let report = journal.prune().unwrap();
        let took = started.elapsed();
        let after = journal.stats();
        println!(
            "harness: {held} events, pruned {} in {:.1} ms, {} commits",
            report.events,
            took.as_secs_f64() * 1e3,
            after.batches - before.batches
        );
        assert_eq!(journal.counts().unwrap().events, held.min(250_000));
    }
}
