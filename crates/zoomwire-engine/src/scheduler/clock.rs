//! The scheduler's sense of time: [`SystemClock`] for the daemon and
//! [`ManualClock`], which only moves when told to, for tests that walk a
//! schedule across weeks and daylight-saving changes in milliseconds.

use parking_lot::Mutex;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use futures_util::future::BoxFuture;

/// Wall-clock time and waiting for it.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
    /// Resolves once `now() >= at`.
    fn sleep_until(&self, at: DateTime<Utc>) -> BoxFuture<'_, ()>;
}

/// Longest single wait of [`SystemClock`]: the wall clock is checked again
/// at least this often, so a clock stepped by NTP or a suspended machine
/// delays a firing by at most this much.
const MAX_NAP: std::time::Duration = std::time::Duration::from_secs(30);

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            loop {
                let Ok(left) = (at - Utc::now()).to_std() else {
                    return;
                };
                if left.is_zero() {
                    return;
                }
                tokio::time::sleep(left.min(MAX_NAP)).await;
            }
        })
    }
}

/// A clock that stands still until [`ManualClock::set`] moves it, and that
/// tells who is waiting for which time ([`ManualClock::next_wake`]).
#[derive(Debug)]
pub struct ManualClock {
    state: Mutex<ManualState>,
    changed: Notify,
}

#[derive(Debug)]
struct ManualState {
    now: DateTime<Utc>,
    sleepers: BTreeMap<u64, DateTime<Utc>>,
    next_id: u64,
}

impl ManualClock {
    pub fn new(now: DateTime<Utc>) -> ManualClock {
        ManualClock {
            state: Mutex::new(ManualState {
                now,
                sleepers: BTreeMap::new(),
                next_id: 0,
            }),
            changed: Notify::new(),
        }
    }

    /// Moves the clock (forwards or back) and wakes whoever waited for a time now passed.
    pub fn set(&self, now: DateTime<Utc>) {
        self.lock().now = now;
        self.changed.notify_waiters();
    }

    /// Waits until someone sleeps until a time later than now, and returns
    /// the earliest such time: when the scheduler will wake next.
    pub async fn next_wake(&self) -> DateTime<Utc> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let state = self.lock();
                let now = state.now;
                if let Some(at) = state.sleepers.values().filter(|at| **at > now).min() {
                    return *at;
                }
            }
            notified.await;
        }
    }

    fn register(&self, at: DateTime<Utc>) -> u64 {
        let id = {
            let mut state = self.lock();
            let id = state.next_id;
            state.next_id += 1;
            state.sleepers.insert(id, at);
            id
        };
        self.changed.notify_waiters();
        id
    }

    fn unregister(&self, id: u64) {
        self.lock().sleepers.remove(&id);
        self.changed.notify_waiters();
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, ManualState> {
        self.state.lock()
    }
}

/// Removes a sleeper's registration when its future ends or is dropped.
struct Registration<'a> {
    clock: &'a ManualClock,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.clock.unregister(self.id);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        self.lock().now
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _registration = Registration {
                clock: self,
                id: self.register(at),
            };
            loop {
                let notified = self.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.now() >= at {
                    return;
                }
                notified.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_manual_clock_wakes_sleepers_when_set_past_their_time() {
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let clock = Arc::new(ManualClock::new(start));
        let at = start + chrono::Duration::hours(1);
        let sleeper = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.sleep_until(at).await })
        };
        assert_eq!(clock.next_wake().await, at);
        clock.set(at - chrono::Duration::seconds(1));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.set(at);
        tokio::time::timeout(std::time::Duration::from_secs(2), sleeper)
            .await
            .unwrap()
            .unwrap();
        assert!(clock.lock().sleepers.is_empty());
    }

    #[tokio::test]
    async fn the_system_clock_returns_at_once_for_a_past_time() {
        let past = Utc::now() - chrono::Duration::seconds(5);
        tokio::time::timeout(
            std::time::Duration::from_secs(1),
            SystemClock.sleep_until(past),
        )
        .await
        .unwrap();
    }
}
