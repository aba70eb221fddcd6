//! The scheduler: fires each enabled scheduled rule of the current rule set
//! as a synthetic event through the same journal and executor as Zoom events.
//!
//! A firing is the event
//! `{"event": "schedule", "rule": NAME, "scheduled_at": T, "previous_at": P,
//! "event_ts": T in ms, "payload": {"object": {"id": NAME}}}`, so its dedupe
//! key is `schedule:<T ms>:<NAME>`: the same firing offered twice (a crash
//! between firing and remembering it) runs once. `previous_at` is this
//! rule's previous firing, or, before its first, the schedule's previous
//! time: a report's window is `previous_at..scheduled_at`. The rule's `mode`
//! decides what happens when a firing finds the previous run still going
//! (`single`, the default for schedules, skips it with a record).
//!
//! Per rule the scheduler keeps a cursor: firings up to it are dealt with.
//! It is persisted in the [`StateStore`] under the reserved rule
//! [`SCHEDULE_STATE_RULE`] as `{"until": T, "fired_at": T|null}`, written
//! when the rule is first seen and at each firing. At start the cursor comes
//! from there, so the firings between it and now are the ones missed while
//! the engine was down: with `catch_up: true` they fire once, as the latest
//! of them; otherwise they are logged and dropped. A firing found more than
//! [`LATE_GRACE`] late while running (a suspended machine) is treated the
//! same way; one found less late fires. A reload is seen at once: new rules
//! start from now, a changed schedule starts from now, removed rules stop.

pub mod clock;

pub use clock::{Clock, ManualClock, SystemClock};

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::effects::state::StateStore;
use crate::engine::executor::Executor;
use crate::event::{Event, Source};
use crate::reload::RuleSetHandle;
use crate::rules::{Rule, RuleSet};
use crate::schedule::CronSchedule;

/// The reserved rule name under which firing times are kept in the state store.
pub const SCHEDULE_STATE_RULE: &str = "__schedule__";

/// A firing found later than this is a missed one (fired only with `catch_up`).
pub const LATE_GRACE: chrono::Duration = chrono::Duration::seconds(60);

/// Fires the scheduled rules of `rules`' current set on `clock` until `shutdown`.
pub async fn run_scheduler(
    rules: Arc<RuleSetHandle>,
    executor: Executor,
    clock: Arc<dyn Clock>,
    last_fired: Arc<dyn StateStore>,
    shutdown: CancellationToken,
) {
    let mut changes = rules.subscribe();
    let mut scheduler = Scheduler {
        executor,
        clock,
        store: last_fired,
        tracked: HashMap::new(),
        starting: true,
    };
    loop {
        changes.borrow_and_update();
        let set = rules.current();
        scheduler.sync(&set).await;
        scheduler.fire_due(&set).await;
        let next = scheduler.next_wake(&set);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = changes.changed() => if changed.is_err() { break },
            _ = sleep_until(&*scheduler.clock, next) => {}
        }
    }
}

async fn sleep_until(clock: &dyn Clock, at: Option<DateTime<Utc>>) {
    match at {
        Some(at) => clock.sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What the scheduler knows of one rule.
#[derive(Debug, Clone)]
struct Tracked {
    /// The schedule as compiled (expression and time zone): a change restarts the rule from now.
    schedule: String,
    /// Firings at or before this are dealt with.
    cursor: DateTime<Utc>,
    /// The rule's latest firing, for `previous_at`.
    fired_at: Option<DateTime<Utc>>,
}

struct Scheduler {
    executor: Executor,
    clock: Arc<dyn Clock>,
    store: Arc<dyn StateStore>,
    tracked: HashMap<Arc<str>, Tracked>,
    /// True until the first rule set is taken in: only then is downtime looked for.
    starting: bool,
}

/// The enabled scheduled rules of a set.
fn scheduled(set: &RuleSet) -> impl Iterator<Item = (&Arc<Rule>, &CronSchedule)> {
    set.rules()
        .iter()
        .filter(|rule| rule.enabled)
        .filter_map(|rule| rule.schedule().map(|schedule| (rule, schedule)))
}

fn schedule_id(schedule: &CronSchedule) -> String {
    format!("{} {}", schedule.normalized, schedule.timezone)
}

impl Scheduler {
    /// Takes in the current set: new rules, changed schedules, removed rules.
    async fn sync(&mut self, set: &RuleSet) {
        let now = self.clock.now();
        let mut tracked = HashMap::new();
        for (rule, schedule) in scheduled(set) {
            let id = schedule_id(schedule);
            let entry = match self.tracked.remove(&rule.name) {
                Some(known) if known.schedule == id => known,
                Some(known) => {
                    tracing::info!(rule = %rule.name, schedule = %schedule.expression, "schedule changed");
                    write_record(&self.store, &rule.name, now, known.fired_at).await;
                    Tracked {
                        schedule: id,
                        cursor: now,
                        fired_at: known.fired_at,
                    }
                }
                None => self.first_sight(&rule.name, id, now).await,
            };
            tracked.insert(rule.name.clone(), entry);
        }
        self.tracked = tracked;
        self.starting = false;
    }

    /// A rule not tracked yet: from its stored cursor at start (the time
    /// since is downtime), from now otherwise (it is new, or back from being
    /// removed or disabled: the time since is not downtime, and is forgotten).
    async fn first_sight(&self, name: &str, schedule: String, now: DateTime<Utc>) -> Tracked {
        let stored = read_record(&self.store, name).await;
        let fired_at = stored.as_ref().and_then(|r| r.fired_at);
        let cursor = match &stored {
            Some(record) if self.starting => record.until.min(now),
            _ => {
                write_record(&self.store, name, now, fired_at).await;
                now
            }
        };
        Tracked {
            schedule,
            cursor,
            fired_at,
        }
    }

    /// Fires every rule whose next firing has come.
    async fn fire_due(&mut self, set: &Arc<RuleSet>) {
        let now = self.clock.now();
        for (rule, schedule) in scheduled(set) {
            let Some(mut entry) = self.tracked.get(&rule.name).cloned() else {
                continue;
            };
            let Some(latest) = schedule
                .last_at_or_before(now)
                .filter(|at| *at > entry.cursor)
            else {
                continue;
            };
            let first = schedule.next_after(entry.cursor).unwrap_or(latest);
            if now - latest <= LATE_GRACE || schedule.catch_up {
                if first < latest {
                    tracing::info!(rule = %rule.name, from = %first, to = %latest, "firing once for several missed firings");
                }
                self.fire(set, rule, schedule, latest, entry.fired_at).await;
                entry.fired_at = Some(latest);
            } else {
                tracing::warn!(rule = %rule.name, from = %first, to = %latest, "missed firings not replayed (set `catch_up: true` to fire once for them)");
                metrics::counter!("zoomwire_schedule_missed_total", "rule" => rule.name.to_string()).increment(1);
            }
            entry.cursor = now;
            write_record(&self.store, &rule.name, now, entry.fired_at).await;
            self.tracked.insert(rule.name.clone(), entry);
        }
    }

    async fn fire(
        &self,
        set: &Arc<RuleSet>,
        rule: &Rule,
        schedule: &CronSchedule,
        at: DateTime<Utc>,
        fired_at: Option<DateTime<Utc>>,
    ) {
        let previous = fired_at.or_else(|| schedule.prev_before(at)).unwrap_or(at);
        let event = match schedule_event(&rule.name, at, previous) {
            Ok(event) => event,
            Err(error) => {
                tracing::error!(rule = %rule.name, %error, "cannot build the schedule event");
                return;
            }
        };
        metrics::counter!("zoomwire_schedule_firings_total", "rule" => rule.name.to_string())
            .increment(1);
        match self.executor.handle_event(set, event).await {
            Ok(outcome) if outcome.duplicate => {
                tracing::info!(rule = %rule.name, scheduled_at = %at, "firing already in the journal, not run again")
            }
            Ok(_) => tracing::debug!(rule = %rule.name, scheduled_at = %at, "schedule fired"),
            Err(error) => {
                tracing::error!(rule = %rule.name, %error, "schedule firing not recorded")
            }
        }
    }

    /// The earliest next firing of any tracked rule.
    fn next_wake(&self, set: &RuleSet) -> Option<DateTime<Utc>> {
        scheduled(set)
            .filter_map(|(rule, schedule)| {
                let entry = self.tracked.get(&rule.name)?;
                schedule.next_after(entry.cursor)
            })
            .min()
    }
}

/// The synthetic event of one firing.
pub fn schedule_event(
    rule: &str,
    scheduled_at: DateTime<Utc>,
    previous_at: DateTime<Utc>,
) -> Result<Event, crate::event::EventError> {
    let body = json!({
        "event": "schedule",
        "rule": rule,
        "scheduled_at": rfc3339(scheduled_at),
        "previous_at": rfc3339(previous_at),
        "event_ts": scheduled_at.timestamp_millis(),
        "payload": { "object": { "id": rule } },
    });
    Event::from_value(&body, Source::Schedule(rule.to_string()))
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// What the state store keeps per scheduled rule.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    until: DateTime<Utc>,
    fired_at: Option<DateTime<Utc>>,
}

async fn read_record(store: &Arc<dyn StateStore>, rule: &str) -> Option<Record> {
    let store = store.clone();
    let key = rule.to_string();
    let value = tokio::task::spawn_blocking(move || store.get(SCHEDULE_STATE_RULE, &key)).await;
    match value {
        Ok(Ok(Some(value))) => parse_record(&value),
        Ok(Ok(None)) => None,
        Ok(Err(error)) => {
            tracing::error!(rule, %error, "cannot read the schedule's last firing");
            None
        }
        Err(error) => {
            tracing::error!(rule, %error, "cannot read the schedule's last firing");
            None
        }
    }
}

fn parse_record(value: &Value) -> Option<Record> {
    let time = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    Some(Record {
        until: time("until")?,
        fired_at: time("fired_at"),
    })
}

async fn write_record(
    store: &Arc<dyn StateStore>,
    rule: &str,
    until: DateTime<Utc>,
    fired_at: Option<DateTime<Utc>>,
) {
    let value = json!({
        "until": rfc3339_precise(until),
        "fired_at": fired_at.map(rfc3339_precise),
    });
    let store = store.clone();
    let key = rule.to_string();
    let written =
        tokio::task::spawn_blocking(move || store.set(SCHEDULE_STATE_RULE, &key, value, None))
            .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::error!(rule, %error, "cannot remember the schedule's firing"),
        Err(error) => tracing::error!(rule, %error, "cannot remember the schedule's firing"),
    }
}

fn rfc3339_precise(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_firing_has_a_stable_dedupe_key() {
        let at = Utc.with_ymd_and_hms(2026, 11, 23, 8, 0, 0).unwrap();
        let a = schedule_event("weekly", at, at - chrono::Duration::days(7)).unwrap();
        let b = schedule_event("weekly", at, at - chrono::Duration::days(14)).unwrap();
        assert_eq!(a.id, b.id);
        assert_eq!(a.id, format!("schedule:{}:weekly", at.timestamp_millis()));
        assert_eq!(a.source, Source::Schedule("weekly".into()));
        let body = a.body_json();
        assert_eq!(body["scheduled_at"], "2026-11-23T08:00:00Z");
        assert_eq!(body["previous_at"], "2026-11-16T08:00:00Z");
    }

    #[test]
    fn records_read_back_what_was_written() {
        let until = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap();
        let value = json!({"until": rfc3339_precise(until), "fired_at": null});
        assert_eq!(
            parse_record(&value),
            Some(Record {
                until,
                fired_at: None
            })
        );
        assert_eq!(parse_record(&json!({"fired_at": null})), None);
    }
}
