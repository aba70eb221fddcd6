//! What just happened, for the page's live parts: counts that grow when
//! events are accepted or runs change (the page's Server-Sent Events look
//! at them twice a second and say what changed), the latest events with the
//! rules they started (the events tail), and events and finished runs per
//! minute over the last hour (the overview's chart).
//!
//! [`ObservedJournal`] feeds it: it wraps the daemon's journal and reports
//! each write after it succeeded, so that the page sees exactly what was
//! recorded, whichever journal runs underneath. Everything here is in memory
//! and bounded (a fixed ring of minutes, the latest [`RECENT_EVENTS`]
//! events), so the events tail and the chart start empty when the process
//! starts; run history itself is read from the journal. It sits on the
//! daemon's hot path, so a write costs two atomic additions and, for an
//! event or a finished run, a short lock: no clock read, no wake-ups.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, TimeZone, Utc};
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use serde::Serialize;

use crate::effects::gateway::{EffectObserver, EffectRecord, EffectStart, SavedWait, StartMark};
use crate::engine::journal::{
    DetachedAccept, EarlyAccepts, Journal, JournalError, RunRecord, RunSaving, RunStatus,
    UnfinishedRun,
};
use crate::event::{Event, Source};

/// Events kept for the events tail.
pub const RECENT_EVENTS: usize = 200;
/// Minutes the chart covers.
pub const CHART_MINUTES: usize = 60;

/// Counts that only grow: a change in one means that kind of thing changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ticks {
    /// Events accepted.
    pub events: u64,
    /// Run records written (and runs put back by a retry).
    pub runs: u64,
}

/// An accepted event, as the events tail shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventNote {
    pub id: String,
    pub event_type: String,
    pub source: String,
    pub received_at: DateTime<Utc>,
    /// The rules it matched, each with its run.
    pub rules: Vec<MatchedRule>,
}

/// A rule an event matched.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MatchedRule {
    pub rule: String,
    pub run_id: String,
    /// The rule's condition failed to evaluate: the run was skipped at once.
    pub condition_failed: bool,
}

impl MatchedRule {
    fn of(run: &RunRecord) -> MatchedRule {
        MatchedRule {
            rule: run.rule.clone(),
            run_id: run.id.clone(),
            condition_failed: run.status == RunStatus::Skipped,
        }
    }

    fn refill(&mut self, run: &RunRecord) {
        self.rule.clone_from(&run.rule);
        self.run_id.clone_from(&run.id);
        self.condition_failed = run.status == RunStatus::Skipped;
    }
}

/// One minute of the chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MinuteCount {
    /// The minute's start.
    pub minute: DateTime<Utc>,
    pub events: u64,
    /// Runs that finished (whatever their outcome).
    pub runs: u64,
    /// Of those, the ones that failed or died.
    pub failed: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Minutes since the epoch; the counts belong to this minute only.
    minute: i64,
    events: u64,
    runs: u64,
    failed: u64,
}

/// The live feed. See the module documentation.
pub struct Activity {
    events_seen: AtomicU64,
    runs_seen: AtomicU64,
    minutes: Mutex<[Bucket; CHART_MINUTES]>,
    events: Mutex<VecDeque<Recent>>,
}

/// An accepted event as the ring keeps it: its source is put into words
/// only when the events tail is read, not for every event.
struct Recent {
    id: String,
    event_type: String,
    source: Source,
    received_at: DateTime<Utc>,
    rules: Vec<MatchedRule>,
}

impl Recent {
    fn new(event: &Event, runs: &[RunRecord]) -> Recent {
        Recent {
            id: event.id.clone(),
            event_type: event.event_type.clone(),
            source: event.source.clone(),
            received_at: event.received_at,
            rules: runs.iter().map(MatchedRule::of).collect(),
        }
    }

    /// Becomes the note of `event`, reusing the text buffers it has (those
    /// of the event it pushed out of the ring) instead of allocating anew.
    fn refill(&mut self, event: &Event, runs: &[RunRecord]) {
        self.id.clone_from(&event.id);
        self.event_type.clone_from(&event.event_type);
        self.source.clone_from(&event.source);
        self.received_at = event.received_at;
        self.rules.truncate(runs.len());
        for (rule, run) in self.rules.iter_mut().zip(runs) {
            rule.refill(run);
        }
        let kept = self.rules.len();
        self.rules.extend(runs[kept..].iter().map(MatchedRule::of));
    }

    fn note(&self) -> EventNote {
        EventNote {
            id: self.id.clone(),
            event_type: self.event_type.clone(),
            source: self.source.to_string(),
            received_at: self.received_at,
            rules: self.rules.clone(),
        }
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            events_seen: AtomicU64::new(0),
            runs_seen: AtomicU64::new(0),
            minutes: Mutex::new([Bucket::default(); CHART_MINUTES]),
            events: Mutex::new(VecDeque::with_capacity(RECENT_EVENTS)),
        }
    }
}

impl Activity {
    /// The counts now; compare with earlier ones to see what changed.
    pub fn ticks(&self) -> Ticks {
        Ticks {
            events: self.events_seen.load(Ordering::Relaxed),
            runs: self.runs_seen.load(Ordering::Relaxed),
        }
    }

    /// An event was accepted with these run records.
    pub fn event_accepted(&self, event: &Event, runs: &[RunRecord]) {
        {
            let mut events = self.events.lock();
            let oldest = if events.len() == RECENT_EVENTS {
                events.pop_front()
            } else {
                None
            };
            let note = match oldest {
                Some(mut oldest) => {
                    oldest.refill(event, runs);
                    oldest
                }
                None => Recent::new(event, runs),
            };
            events.push_back(note);
        }
        self.count(event.received_at, |bucket| bucket.events += 1);
        for run in runs {
            self.count_finished(run.status, run.finished_at);
        }
        self.events_seen.fetch_add(1, Ordering::Relaxed);
        self.runs_seen
            .fetch_add(runs.len() as u64, Ordering::Relaxed);
    }

    /// A run's record was written.
    pub fn run_recorded(&self, run: &RunRecord) {
        self.run_recorded_as(run.status, run.finished_at);
    }

    /// [`Activity::run_recorded`] from what it reads of the record.
    fn run_recorded_as(&self, status: RunStatus, finished_at: Option<DateTime<Utc>>) {
        self.count_finished(status, finished_at);
        self.runs_changed();
    }

    /// Runs changed in the store by other means (a retry).
    pub fn runs_changed(&self) {
        self.runs_seen.fetch_add(1, Ordering::Relaxed);
    }

    /// The latest events, newest first, at most `limit`.
    pub fn recent_events(&self, limit: usize) -> Vec<EventNote> {
        self.events
            .lock()
            .iter()
            .rev()
            .take(limit)
            .map(Recent::note)
            .collect()
    }

    /// Events and finished runs in each of the [`CHART_MINUTES`] minutes up
    /// to the one holding `now`, oldest first.
    pub fn last_hour(&self, now: DateTime<Utc>) -> Vec<MinuteCount> {
        let current = minute_of(now);
        let buckets = *self.minutes.lock();
        (0..CHART_MINUTES as i64)
            .rev()
            .map(|back| {
                let minute = current - back;
                let bucket = buckets[slot(minute)];
                let counted = bucket.minute == minute;
                MinuteCount {
                    minute: Utc
                        .timestamp_opt(minute * 60, 0)
                        .single()
                        .unwrap_or_default(),
                    events: if counted { bucket.events } else { 0 },
                    runs: if counted { bucket.runs } else { 0 },
                    failed: if counted { bucket.failed } else { 0 },
                }
            })
            .collect()
    }

    /// Counts a run in the minute it finished, if it did.
    fn count_finished(&self, status: RunStatus, finished_at: Option<DateTime<Utc>>) {
        let Some(finished_at) = finished_at else {
            return;
        };
        let failed = matches!(status, RunStatus::Failed | RunStatus::Dead);
        self.count(finished_at, |bucket| {
            bucket.runs += 1;
            bucket.failed += u64::from(failed);
        });
    }

    fn count(&self, at: DateTime<Utc>, add: impl FnOnce(&mut Bucket)) {
        let minute = minute_of(at);
        let mut buckets = self.minutes.lock();
        let bucket = &mut buckets[slot(minute)];
        if bucket.minute > minute {
            // An hour or more older than what the slot holds: off the chart.
            return;
        }
        if bucket.minute != minute {
            *bucket = Bucket {
                minute,
                ..Bucket::default()
            };
        }
        add(bucket);
    }
}

fn minute_of(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(60)
}

fn slot(minute: i64) -> usize {
    minute.rem_euclid(CHART_MINUTES as i64) as usize
}

/// A journal that reports what it wrote to an [`Activity`]: every call goes
/// to the journal it wraps, and a successful write is then reported.
pub struct ObservedJournal {
    inner: Arc<dyn Journal>,
    activity: Arc<Activity>,
}

impl ObservedJournal {
    pub fn new(inner: Arc<dyn Journal>, activity: Arc<Activity>) -> ObservedJournal {
        ObservedJournal { inner, activity }
    }
}

impl EffectObserver for ObservedJournal {
    fn effect_starting(&self, run_id: &str, start: &EffectStart) -> Result<(), String> {
        self.inner.effect_starting(run_id, start)
    }

    fn effect_starting_async(&self, run_id: &str, start: &EffectStart) -> Option<StartMark> {
        self.inner.effect_starting_async(run_id, start)
    }

    fn marks_without_blocking(&self) -> bool {
        self.inner.marks_without_blocking()
    }

    fn effect_completed(&self, run_id: &str, record: &EffectRecord) {
        self.inner.effect_completed(run_id, record);
    }

    fn effect_completed_later(&self, run_id: &str, record: &EffectRecord) -> SavedWait {
        self.inner.effect_completed_later(run_id, record)
    }
}

impl Journal for ObservedJournal {
    fn accept_event_with_runs<'a>(
        &'a self,
        event: &'a Event,
        runs: &'a [RunRecord],
    ) -> BoxFuture<'a, Result<bool, JournalError>> {
        Box::pin(async move {
            let fresh = self.inner.accept_event_with_runs(event, runs).await?;
            if fresh {
                self.activity.event_accepted(event, runs);
            }
            Ok(fresh)
        })
    }

    fn accept_events_with_runs<'a>(
        &'a self,
        events: &'a [(&'a Event, &'a [RunRecord])],
    ) -> BoxFuture<'a, Vec<Result<bool, JournalError>>> {
        Box::pin(async move {
            let answers = self.inner.accept_events_with_runs(events).await;
            for ((event, runs), answer) in events.iter().zip(&answers) {
                if matches!(answer, Ok(true)) {
                    self.activity.event_accepted(event, runs);
                }
            }
            answers
        })
    }

    /// Shown once written, from the inner journal's thread.
    fn accept_events_detached<'a>(
        &'a self,
        events: &'a [&'a Event],
        done: DetachedAccept,
    ) -> BoxFuture<'a, ()> {
        let shown: Vec<Event> = events.iter().map(|event| (*event).clone()).collect();
        let activity = self.activity.clone();
        let observed: DetachedAccept = Box::new(move |answers| {
            for (event, answer) in shown.iter().zip(&answers) {
                if matches!(answer, Ok(true)) {
                    activity.event_accepted(event, &[]);
                }
            }
            done(answers)
        });
        self.inner.accept_events_detached(events, observed)
    }

    fn answers_detached(&self) -> bool {
        self.inner.answers_detached()
    }

    /// Shown once executed: an event whose commit then fails is journaled
    /// again by intake, and shown again.
    fn accept_events_early<'a>(
        &'a self,
        events: &'a [(&'a Event, &'a [RunRecord])],
    ) -> BoxFuture<'a, EarlyAccepts> {
        Box::pin(async move {
            let early = self.inner.accept_events_early(events).await;
            for ((event, runs), answer) in events.iter().zip(&early.executed) {
                if matches!(answer, Ok(true)) {
                    self.activity.event_accepted(event, runs);
                }
            }
            early
        })
    }

    fn record_run<'a>(&'a self, run: &'a RunRecord) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            self.inner.record_run(run).await?;
            self.activity.run_recorded(run);
            Ok(())
        })
    }

    fn queue_run(&self, run: &RunRecord) {
        self.inner.queue_run(run);
        self.activity.run_recorded(run);
    }

    fn record_observed_run<'a>(
        &'a self,
        run: &'a RunRecord,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            self.inner.record_observed_run(run).await?;
            self.activity.run_recorded(run);
            Ok(())
        })
    }

    fn queue_observed_run(&self, run: &RunRecord) -> Option<RunSaving> {
        let saving = self.inner.queue_observed_run(run)?;
        let (activity, status, finished_at) = (self.activity.clone(), run.status, run.finished_at);
        Some(Box::pin(async move {
            saving.await?;
            activity.run_recorded_as(status, finished_at);
            Ok(())
        }))
    }

    fn unfinished_runs(&self) -> BoxFuture<'_, Result<Vec<UnfinishedRun>, JournalError>> {
        self.inner.unfinished_runs()
    }

    fn unfinished_run_ids(&self) -> BoxFuture<'_, Result<Vec<String>, JournalError>> {
        self.inner.unfinished_run_ids()
    }

    fn unfinished_runs_among<'a>(
        &'a self,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<UnfinishedRun>, JournalError>> {
        self.inner.unfinished_runs_among(ids)
    }

    fn keeps_events(&self) -> bool {
        self.inner.keeps_events()
    }

    fn stored_event<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Event>, JournalError>> {
        self.inner.stored_event(id)
    }

    fn claim_start<'a>(
        &'a self,
        run: &'a RunRecord,
        places: u32,
    ) -> BoxFuture<'a, Result<bool, JournalError>> {
        self.inner.claim_start(run, places)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Source;
    use crate::journal::memory::MemoryJournal;

    fn event(n: i64) -> Event {
        let body = serde_json::json!({"event": "meeting.ended", "event_ts": n});
        Event::from_value(&body, Source::Webhook).unwrap()
    }

    fn run(id: &str, event: &Event, status: RunStatus) -> RunRecord {
        RunRecord {
            finished_at: status.is_finished().then(Utc::now),
            ..RunRecord::for_test(id, "notify", &event.id, &event.event_type, status)
        }
    }

    #[tokio::test]
    async fn written_events_and_runs_are_reported_and_duplicates_are_not() {
        let activity = Arc::new(Activity::default());
        let journal = ObservedJournal::new(Arc::new(MemoryJournal::default()), activity.clone());
        let first = event(1);
        let pending = run("r1", &first, RunStatus::Pending);
        assert!(
            journal
                .accept_event_with_runs(&first, std::slice::from_ref(&pending))
                .await
                .unwrap()
        );
        assert_eq!(activity.ticks(), Ticks { events: 1, runs: 1 });
        assert!(!journal.accept_event(&first).await.unwrap(), "a duplicate");
        assert_eq!(
            activity.ticks(),
            Ticks { events: 1, runs: 1 },
            "is not reported"
        );

        journal
            .record_run(&run("r1", &first, RunStatus::Dead))
            .await
            .unwrap();
        assert_eq!(activity.ticks().runs, 2);
        let notes = activity.recent_events(10);
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].rules[0].rule, "notify");
        assert_eq!(notes[0].rules[0].run_id, "r1");
        let hour = activity.last_hour(Utc::now());
        assert_eq!(hour.len(), CHART_MINUTES);
        let now = hour.last().unwrap();
        assert_eq!((now.events, now.runs, now.failed), (1, 1, 1));
    }

    #[tokio::test]
    async fn a_queued_run_record_is_reported_once_written() {
        let dir = tempfile::tempdir().unwrap();
        let options = crate::journal::JournalOptions {
            prune_interval: None,
            ..crate::journal::JournalOptions::default()
        };
        let store = crate::journal::SqliteJournal::open(dir.path(), options).unwrap();
        let activity = Arc::new(Activity::default());
        let journal = ObservedJournal::new(Arc::new(store), activity.clone());
        let first = event(1);
        let pending = run("r1", &first, RunStatus::Pending);
        let runs = std::slice::from_ref(&pending);
        assert!(journal.accept_event_with_runs(&first, runs).await.unwrap());
        let saving = journal.queue_observed_run(&run("r1", &first, RunStatus::Failed));
        saving.expect("the SQLite journal queues it").await.unwrap();
        assert_eq!(activity.ticks().runs, 2);
        let now = *activity.last_hour(Utc::now()).last().unwrap();
        assert_eq!((now.runs, now.failed), (1, 1));
        let memory = ObservedJournal::new(Arc::new(MemoryJournal::default()), activity);
        let record = run("r1", &first, RunStatus::Succeeded);
        assert!(
            memory.queue_observed_run(&record).is_none(),
            "written at once"
        );
    }

    #[test]
    fn minutes_older_than_an_hour_are_forgotten() {
        let activity = Activity::default();
        let start = Utc.with_ymd_and_hms(2026, 1, 2, 9, 0, 30).unwrap();
        activity.count(start, |b| b.events += 3);
        let later = start + chrono::Duration::minutes(59);
        let hour = activity.last_hour(later);
        assert_eq!(
            hour[0].minute,
            Utc.with_ymd_and_hms(2026, 1, 2, 9, 0, 0).unwrap()
        );
        assert_eq!(hour[0].events, 3, "59 minutes on, still shown");
        activity.count(later + chrono::Duration::minutes(1), |b| b.events += 1);
        let hour = activity.last_hour(later + chrono::Duration::minutes(1));
        assert_eq!(
            hour.iter().map(|m| m.events).sum::<u64>(),
            1,
            "the old minute's slot was reused"
        );
        assert_eq!(activity.recent_events(5), Vec::new());
    }

    #[test]
    fn the_tail_keeps_the_latest_events() {
        let activity = Activity::default();
        for n in 0..(RECENT_EVENTS as i64 + 5) {
            activity.event_accepted(&event(n), &[]);
        }
        let notes = activity.recent_events(usize::MAX);
        assert_eq!(notes.len(), RECENT_EVENTS);
        assert_eq!(
            notes[0].id,
            event(RECENT_EVENTS as i64 + 4).id,
            "newest first"
        );
    }

    #[test]
    fn a_reused_note_is_exactly_the_new_event() {
        let activity = Activity::default();
        let mut expected = Vec::new();
        for n in 0..(2 * RECENT_EVENTS as i64) {
            let event = event(n);
            let runs: Vec<RunRecord> = (0..(n % 3))
                .map(|r| {
                    let status = if r == 1 {
                        RunStatus::Skipped
                    } else {
                        RunStatus::Pending
                    };
                    run(&format!("run-{n}-{r}"), &event, status)
                })
                .collect();
            activity.event_accepted(&event, &runs);
            expected.push(Recent::new(&event, &runs).note());
        }
        let mut notes = activity.recent_events(usize::MAX);
        notes.reverse();
        assert_eq!(notes, expected[RECENT_EVENTS..]);
    }
}
