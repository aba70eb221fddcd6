//! The journal without a store: the same seams as the SQLite journal, in
//! memory, where nothing needs to survive the process. The daemon's
//! `ZOOMWIRE_JOURNAL=memory` (benchmarks, demos) bounds it with
//! [`MemoryLimits`]; `fire`, `replay`, `zoomwire test` and the tests keep
//! everything ([`MemoryJournal::default`]).
//!
//! Bounded, it forgets: event ids are remembered for deduplication as
//! 128-bit hashes, the newest `max_event_ids` of them; events are kept only
//! while a run of theirs is unfinished; finished runs are kept for the admin
//! API up to `max_finished_runs`, oldest dropped first. Every operation but
//! [`MemoryJournal::runs`] is O(1) under one short lock.

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::effects::gateway::{EffectObserver, EffectRecord, EffectStart};
use crate::engine::journal::{Journal, JournalError, RunRecord, UnfinishedRun};
use crate::event::{Event, Source};
use crate::journal::history::{
    HistoryError, RuleActivity, RunHistory, RunPage, RunQuery, RunTrace, TraceQuery,
    list_in_memory, rule_activity_in_memory, trace_in_memory,
};
use futures_util::future::BoxFuture;

/// How much a [`MemoryJournal`] remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Event ids remembered to drop duplicates.
    pub max_event_ids: usize,
    /// Finished runs kept for the admin API.
    pub max_finished_runs: usize,
}

impl MemoryLimits {
    /// Nothing is forgotten (`fire`, `replay`, tests).
    pub const UNBOUNDED: MemoryLimits = MemoryLimits {
        max_event_ids: usize::MAX,
        max_finished_runs: usize::MAX,
    };
}

impl Default for MemoryLimits {
    fn default() -> Self {
        MemoryLimits {
            max_event_ids: 100_000,
            max_finished_runs: 1_000,
        }
    }
}

/// A journal in memory. See the module documentation.
pub struct MemoryJournal {
    limits: MemoryLimits,
    state: Mutex<State>,
}

/// Keeps everything: [`MemoryLimits::UNBOUNDED`].
impl Default for MemoryJournal {
    fn default() -> Self {
        MemoryJournal::new(MemoryLimits::UNBOUNDED)
    }
}

/// A run as kept, with the order its first record came in.
struct KeptRun {
    order: u64,
    /// [`run_key`] of its id.
    key: u64,
    run: RunRecord,
}

/// What is kept of an event.
struct KeptEvent {
    raw: Arc<str>,
    source: Source,
}

/// Sets and maps keyed by an id's [`id_hash`], which is already a keyed
/// hash: hashing it again would only cost time.
type IdBuild = BuildHasherDefault<IdHasher>;

#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u128` keys are hashed; this covers any other use correctly.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64;
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

#[derive(Default)]
struct State {
    seen: HashSet<u128, IdBuild>,
    seen_order: VecDeque<u128>,
    /// Events accepted whose runs may not have finished, by [`id_hash`],
    /// with how many unfinished runs hold them. Only the text is kept: a
    /// decoded event is many times larger, and is rebuilt only to resume a run.
    events: HashMap<u128, (KeptEvent, usize), IdBuild>,
    /// Events accepted but with no run recorded yet, oldest first; trimmed
    /// so events that matched no rule do not pile up.
    unclaimed: VecDeque<u128>,
    unfinished: HashMap<String, KeptRun>,
    finished: VecDeque<KeptRun>,
    /// How many of `finished` have each [`run_key`]: a new run (every run
    /// once) is looked for in `finished` only when its key is there,
    /// instead of comparing its id with each of up to `max_finished_runs`.
    finished_keys: HashMap<u64, u32, IdBuild>,
    /// The order the next new run gets.
    next_order: u64,
}

impl MemoryJournal {
    pub fn new(limits: MemoryLimits) -> MemoryJournal {
        MemoryJournal {
            limits,
            state: Mutex::default(),
        }
    }

    /// Every run kept, in the order they were first recorded, latest state
    /// of each.
    pub fn runs(&self) -> Vec<RunRecord> {
        let state = self.lock();
        let mut kept: Vec<&KeptRun> = state.unfinished.values().chain(&state.finished).collect();
        kept.sort_unstable_by_key(|kept| kept.order);
        kept.into_iter().map(|kept| kept.run.clone()).collect()
    }

    /// Whether an event with this id would be dropped as a duplicate now.
    pub fn is_duplicate(&self, id: &str) -> bool {
        self.lock().seen.contains(&id_hash(id))
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Every run kept, unfinished and finished, in no order.
    fn kept_runs(&self) -> Vec<RunRecord> {
        let state = self.lock();
        state
            .unfinished
            .values()
            .chain(state.finished.iter())
            .map(|kept| kept.run.clone())
            .collect()
    }
}

/// Two SipHash keys of this process: 128 bits make a collision between
/// the ids of one window (100,000) about 2^-94 likely.
fn id_hash(id: &str) -> u128 {
    static KEYS: std::sync::OnceLock<(RandomState, RandomState)> = std::sync::OnceLock::new();
    let (low, high) = KEYS.get_or_init(|| (RandomState::new(), RandomState::new()));
    (u128::from(high.hash_one(id)) << 64) | u128::from(low.hash_one(id))
}

/// A keyed hash of a run id, to tell at once that a run is not among the
/// finished ones; equal keys are confirmed by comparing the ids.
fn run_key(id: &str) -> u64 {
    static KEY: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
    KEY.get_or_init(RandomState::new).hash_one(id)
}

/// Keeps an event with its runs unless it is a duplicate (counted); true when fresh.
fn accept_into(
    state: &mut State,
    limits: &MemoryLimits,
    event: &Event,
    runs: &[RunRecord],
) -> bool {
    let hash = id_hash(&event.id);
    let fresh = state.remember(hash, limits);
    if fresh {
        state.keep_event(hash, event, limits);
        for run in runs {
            state.record(run, limits);
        }
    } else {
        metrics::counter!("zoomwire_events_duplicate_total").increment(1);
    }
    fresh
}

impl State {
    /// Remembers the id of `hash`; false when it was already seen.
    fn remember(&mut self, hash: u128, limits: &MemoryLimits) -> bool {
        if !self.seen.insert(hash) {
            return false;
        }
        self.seen_order.push_back(hash);
        while self.seen_order.len() > limits.max_event_ids.max(1) {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    fn keep_event(&mut self, hash: u128, event: &Event, limits: &MemoryLimits) {
        let kept = KeptEvent {
            raw: event.raw.clone(),
            source: event.source.clone(),
        };
        self.events.insert(hash, (kept, 0));
        self.unclaimed.push_back(hash);
        // Events no run claimed (most of them: no rule matched) go once the
        // window is full; claimed ones stay while their runs are unfinished.
        while self.unclaimed.len() > limits.max_finished_runs.max(1) {
            if let Some(old) = self.unclaimed.pop_front()
                && self.events.get(&old).is_some_and(|(_, runs)| *runs == 0)
            {
                self.events.remove(&old);
            }
        }
    }

    fn record(&mut self, run: &RunRecord, limits: &MemoryLimits) {
        if let Some(kept) = self.unfinished.get_mut(&run.id) {
            kept.run = run.clone();
            if run.status.is_finished()
                && let Some(kept) = self.unfinished.remove(&run.id)
            {
                self.release_event(&run.event_id);
                self.push_finished(kept, limits);
            }
            return;
        }
        let key = run_key(&run.id);
        let finished = if self.finished_keys.contains_key(&key) {
            self.finished.iter().rposition(|kept| kept.run.id == run.id)
        } else {
            None
        };
        let order = match finished {
            // A finished run recorded again: a retry after `failed`.
            Some(position) if run.status.is_finished() => {
                self.finished[position].run = run.clone();
                return;
            }
            Some(position) => self.take_finished(position).map(|kept| kept.order),
            None => None,
        };
        let order = order.unwrap_or_else(|| {
            self.next_order += 1;
            self.next_order
        });
        let kept = KeptRun {
            order,
            key,
            run: run.clone(),
        };
        if run.status.is_finished() {
            self.push_finished(kept, limits);
            return;
        }
        if let Some((_, runs)) = self.events.get_mut(&id_hash(&run.event_id)) {
            *runs += 1;
        }
        self.unfinished.insert(run.id.clone(), kept);
    }

    fn push_finished(&mut self, kept: KeptRun, limits: &MemoryLimits) {
        *self.finished_keys.entry(kept.key).or_default() += 1;
        self.finished.push_back(kept);
        while self.finished.len() > limits.max_finished_runs {
            if let Some(old) = self.finished.pop_front() {
                self.forget_finished_key(old.key);
            }
        }
    }

    fn take_finished(&mut self, position: usize) -> Option<KeptRun> {
        let kept = self.finished.remove(position)?;
        self.forget_finished_key(kept.key);
        Some(kept)
    }

    fn forget_finished_key(&mut self, key: u64) {
        if let Some(count) = self.finished_keys.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.finished_keys.remove(&key);
            }
        }
    }

    fn release_event(&mut self, event_id: &str) {
        let hash = id_hash(event_id);
        let Some((_, runs)) = self.events.get_mut(&hash) else {
            return;
        };
        *runs = runs.saturating_sub(1);
        if *runs == 0 {
            self.events.remove(&hash);
        }
    }
}

impl EffectObserver for MemoryJournal {
    /// Nothing survives the process, so nothing is ever in doubt.
    fn effect_starting(&self, _run_id: &str, _start: &EffectStart) -> Result<(), String> {
        Ok(())
    }

    fn marks_without_blocking(&self) -> bool {
        true
    }

    /// Effects are kept with their run's record, not on their own.
    fn effect_completed(&self, _run_id: &str, _record: &EffectRecord) {}
}

impl Journal for MemoryJournal {
    fn accept_event_with_runs<'a>(
        &'a self,
        event: &'a Event,
        runs: &'a [RunRecord],
    ) -> BoxFuture<'a, Result<bool, JournalError>> {
        let fresh = accept_into(&mut self.lock(), &self.limits, event, runs);
        Box::pin(async move { Ok(fresh) })
    }

    /// One event at a time, each under its own short lock (held for a whole
    /// batch, it kept the runs' records waiting), without a future each.
    fn accept_events_with_runs<'a>(
        &'a self,
        events: &'a [(&'a Event, &'a [RunRecord])],
    ) -> BoxFuture<'a, Vec<Result<bool, JournalError>>> {
        let answers = events
            .iter()
            .map(|(event, runs)| Ok(accept_into(&mut self.lock(), &self.limits, event, runs)))
            .collect();
        Box::pin(async move { answers })
    }

    fn record_run<'a>(&'a self, run: &'a RunRecord) -> BoxFuture<'a, Result<(), JournalError>> {
        self.lock().record(run, &self.limits);
        Box::pin(async { Ok(()) })
    }

    fn queue_run(&self, run: &RunRecord) {
        self.lock().record(run, &self.limits);
    }

    fn unfinished_runs(&self) -> BoxFuture<'_, Result<Vec<UnfinishedRun>, JournalError>> {
        let unfinished = {
            let state = self.lock();
            let mut runs: Vec<&KeptRun> = state.unfinished.values().collect();
            runs.sort_unstable_by_key(|kept| kept.order);
            runs.into_iter()
                .map(|kept| &kept.run)
                .filter_map(|run| {
                    let (kept, _) = state.events.get(&id_hash(&run.event_id))?;
                    let event = Event::parse(&kept.raw, kept.source.clone()).ok()?;
                    Some(UnfinishedRun {
                        run: run.clone(),
                        event,
                        in_doubt: Vec::new(),
                    })
                })
                .collect()
        };
        Box::pin(async move { Ok(unfinished) })
    }
}

impl RunHistory for MemoryJournal {
    fn list_runs(&self, query: &RunQuery) -> Result<RunPage, HistoryError> {
        Ok(list_in_memory(&self.kept_runs(), query))
    }

    /// The trigger is not shown: `event` is `None`.
    fn run_trace(&self, id: &str, query: &TraceQuery) -> Result<Option<RunTrace>, HistoryError> {
        Ok(self
            .kept_runs()
            .iter()
            .find(|run| run.id == id)
            .map(|run| trace_in_memory(run, query)))
    }

    fn rule_activity(
        &self,
        rule: &str,
        since: DateTime<Utc>,
        recent: usize,
    ) -> Result<RuleActivity, HistoryError> {
        Ok(rule_activity_in_memory(
            &self.kept_runs(),
            rule,
            since,
            recent,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::journal::RunStatus;

    fn event(n: usize) -> Event {
        let body = serde_json::json!({
            "event": "meeting.started",
            "event_ts": 1_732_000_000_000i64 + n as i64,
            "payload": { "object": { "uuid": format!("u{n}") } },
        });
        Event::from_value(&body, Source::Test).unwrap()
    }

    fn run(id: &str, event: &Event, status: RunStatus) -> RunRecord {
        RunRecord::for_test(id, "r", &event.id, &event.event_type, status)
    }

    fn limits() -> MemoryLimits {
        MemoryLimits {
            max_event_ids: 3,
            max_finished_runs: 2,
        }
    }

    #[tokio::test]
    async fn duplicates_are_dropped_within_the_window_and_forgotten_after() {
        let journal = MemoryJournal::new(limits());
        let events: Vec<Event> = (0..4).map(event).collect();
        assert!(journal.accept_event(&events[0]).await.unwrap());
        assert!(!journal.accept_event(&events[0]).await.unwrap());
        for e in &events[1..] {
            assert!(journal.accept_event(e).await.unwrap());
        }
        // Four ids seen with room for three: the first is forgotten.
        assert!(journal.accept_event(&events[0]).await.unwrap());
        let state = journal.lock();
        assert_eq!(state.seen.len(), 3);
        assert!(state.events.len() <= 2, "unclaimed events are trimmed");
    }

    #[tokio::test]
    async fn a_batch_is_answered_per_event_in_order_with_its_duplicates() {
        let journal = MemoryJournal::default();
        let (first, second) = (event(1), event(2));
        let runs = [run("r1", &first, RunStatus::Pending)];
        let batch = [(&first, &runs[..]), (&second, &[][..]), (&first, &runs[..])];
        let answers = journal.accept_events_with_runs(&batch).await;
        let answers: Vec<bool> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!(answers, [true, true, false]);
        assert_eq!(journal.runs().len(), 1, "the duplicate's runs are not kept");
    }

    #[tokio::test]
    async fn a_run_retried_after_failing_is_kept_once_in_its_place() {
        let journal = MemoryJournal::default();
        let first = event(1);
        journal.accept_event(&first).await.unwrap();
        for (id, status) in [
            ("a", RunStatus::Pending),
            ("b", RunStatus::Skipped),
            ("a", RunStatus::Failed),
            ("a", RunStatus::Running),
            ("a", RunStatus::Succeeded),
        ] {
            journal.record_run(&run(id, &first, status)).await.unwrap();
        }
        let kept: Vec<(String, RunStatus)> = journal
            .runs()
            .into_iter()
            .map(|run| (run.id, run.status))
            .collect();
        assert_eq!(
            kept,
            [
                ("a".to_string(), RunStatus::Succeeded),
                ("b".to_string(), RunStatus::Skipped)
            ]
        );
        let query = RunQuery {
            limit: 10,
            ..RunQuery::default()
        };
        assert_eq!(journal.list_runs(&query).unwrap().runs.len(), 2);
        assert_finished_keys_match(&journal);
    }

    /// The keys of the finished runs are those of the runs in `finished`.
    fn assert_finished_keys_match(journal: &MemoryJournal) {
        let state = journal.lock();
        let mut expected: HashMap<u64, u32> = HashMap::new();
        for kept in &state.finished {
            assert_eq!(kept.key, run_key(&kept.run.id));
            *expected.entry(kept.key).or_default() += 1;
        }
        let kept: HashMap<u64, u32> = state.finished_keys.iter().map(|(k, n)| (*k, *n)).collect();
        assert_eq!(kept, expected);
    }

    #[tokio::test]
    async fn finished_runs_pushed_out_of_the_window_are_new_again() {
        let journal = MemoryJournal::new(limits());
        let first = event(1);
        journal.accept_event(&first).await.unwrap();
        for id in ["a", "b", "c", "a"] {
            journal
                .record_run(&run(id, &first, RunStatus::Failed))
                .await
                .unwrap();
            assert_finished_keys_match(&journal);
        }
        let ids: Vec<String> = journal.runs().into_iter().map(|run| run.id).collect();
        assert_eq!(ids, ["c", "a"], "a came back after it was pushed out");
    }

    #[tokio::test]
    async fn unfinished_runs_keep_their_event_and_finished_ones_are_capped() {
        let journal = MemoryJournal::new(limits());
        let first = event(1);
        journal.accept_event(&first).await.unwrap();
        journal
            .record_run(&run("a", &first, RunStatus::Pending))
            .await
            .unwrap();
        for n in 2..10 {
            journal.accept_event(&event(n)).await.unwrap();
        }
        let unfinished = journal.unfinished_runs().await.unwrap();
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].event.id, first.id);
        for id in ["a", "b", "c"] {
            journal
                .record_run(&run(id, &first, RunStatus::Succeeded))
                .await
                .unwrap();
        }
        assert!(journal.unfinished_runs().await.unwrap().is_empty());
        let query = RunQuery {
            limit: 10,
            ..RunQuery::default()
        };
        let listed = journal.list_runs(&query).unwrap();
        let ids: Vec<&str> = listed.runs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["c", "b"], "newest first, at most two");
        assert_finished_keys_match(&journal);
        let trace = TraceQuery::default();
        assert!(journal.run_trace("b", &trace).unwrap().is_some());
        assert!(journal.run_trace("a", &trace).unwrap().is_none());
        let state = journal.lock();
        assert!(
            !state.events.contains_key(&id_hash(&first.id)),
            "an event goes once its last run finished"
        );
        assert!(
            state.events.len() <= 2,
            "only the newest unclaimed events stay"
        );
    }
}
