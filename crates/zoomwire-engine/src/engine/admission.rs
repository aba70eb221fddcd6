//! Admission: which runs of a rule start now, which wait their turn, and
//! which the rule's mode drops. Synchronous bookkeeping without I/O, so the
//! executor decides under one lock and a caller can admit runs strictly in
//! the order their events arrived.
//!
//! Places are counted per rule and concurrency key ([`SlotKey`]):
//!
//! | mode | running at once | beyond that |
//! | --- | --- | --- |
//! | `parallel` | `max_runs` | waits its turn, in arrival order |
//! | `queued` | 1 | waits its turn, in arrival order |
//! | `single` | 1 | dropped: that is what `single` means |
//! | `restart` | 1 | the running one is cancelled; the newest waits for it, older waiting ones are dropped |
//!
//! `max_queued: N` on a `parallel` or `queued` rule is the user's explicit
//! choice to drop beyond N waiting runs of a key; without it nothing is
//! dropped. A waiting run is already durable as pending, so waiting costs
//! only its handle in memory; the total number waiting is what the daemon
//! bounds (it stops reading new events at its bound, see
//! [`Slots::waiting`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use crate::rules::{Mode, Rule};

/// The places of one rule and key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SlotKey {
    pub rule: Arc<str>,
    pub key: Option<String>,
}

/// What a rule's mode allows, read from the rule a run belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    pub max_runs: u32,
    pub max_queued: Option<u32>,
}

impl Policy {
    pub fn of(rule: &Rule) -> Policy {
        Policy {
            mode: rule.mode,
            max_runs: rule.max_runs,
            max_queued: rule.max_queued,
        }
    }

    /// How many runs of one key may run at once.
    fn running_limit(self) -> usize {
        match self.mode {
            Mode::Parallel => self.max_runs.max(1) as usize,
            Mode::Queued | Mode::Single | Mode::Restart => 1,
        }
    }
}

/// The cancel flag of a running run: `restart` sets it; the script checks
/// it as it goes, and a run waiting to retry wakes up on it.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag {
    flag: Arc<AtomicBool>,
    woken: Arc<Notify>,
}

impl CancelFlag {
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::Relaxed);
        self.woken.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// The flag itself, as the script thread reads it.
    pub fn flag(&self) -> &Arc<AtomicBool> {
        &self.flag
    }

    /// Resolves once the run is cancelled.
    pub async fn cancelled(&self) {
        loop {
            let woken = self.woken.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            woken.await;
        }
    }

    fn same(&self, other: &CancelFlag) -> bool {
        Arc::ptr_eq(&self.flag, &other.flag)
    }
}

/// What admission decided for one run.
pub enum Decision<R> {
    /// Start it now; its cancel flag marks its place until [`Slots::release`].
    Start(R, CancelFlag),
    /// It waits its turn; [`Slots::release`] hands it out later.
    Wait,
    /// Its mode drops it, for this reason.
    Drop(R, String),
}

/// A run's admission, with the older waiting runs a `restart` replaced.
pub struct Admission<R> {
    pub decision: Decision<R>,
    pub replaced: Vec<R>,
}

/// What a finished run's release hands out.
pub struct Released<R> {
    /// Waiting runs whose turn came, with their places.
    pub start: Vec<(R, CancelFlag)>,
    /// Waiting runs passed over because a reload removed their rule.
    pub removed: Vec<R>,
}

/// Runs of one rule and key.
struct Slot<R> {
    running: Vec<CancelFlag>,
    waiting: VecDeque<(Policy, R)>,
}

impl<R> Default for Slot<R> {
    fn default() -> Self {
        Slot {
            running: Vec::new(),
            waiting: VecDeque::new(),
        }
    }
}

/// Every rule and key's running and waiting runs.
pub struct Slots<R> {
    slots: HashMap<SlotKey, Slot<R>>,
    waiting: usize,
}

impl<R> Default for Slots<R> {
    fn default() -> Self {
        Slots {
            slots: HashMap::new(),
            waiting: 0,
        }
    }
}

impl<R> Slots<R> {
    /// Runs waiting their turn, over every rule and key.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Decides whether `run` starts, waits or is dropped under `policy`.
    pub fn admit(&mut self, key: SlotKey, policy: Policy, run: R) -> Admission<R> {
        self.admit_parking(key, policy, run, |run| run)
    }

    /// [`Slots::admit`], passing a run that waits through `park` first (to
    /// shrink it to what waiting needs).
    pub fn admit_parking(
        &mut self,
        key: SlotKey,
        policy: Policy,
        run: R,
        park: impl FnOnce(R) -> R,
    ) -> Admission<R> {
        let slot = self.slots.entry(key).or_default();
        let running = slot.running.len();
        let mut replaced = Vec::new();
        let decision = match policy.mode {
            _ if running < policy.running_limit() && slot.waiting.is_empty() => start_in(slot, run),
            Mode::Single => Decision::Drop(run, "a run is already in flight (mode single)".into()),
            Mode::Restart => {
                slot.running.iter().for_each(CancelFlag::cancel);
                replaced.extend(slot.waiting.drain(..).map(|(_, older)| older));
                slot.waiting.push_back((policy, park(run)));
                Decision::Wait
            }
            Mode::Parallel | Mode::Queued => match policy.max_queued {
                Some(max) if slot.waiting.len() >= max as usize => Decision::Drop(
                    run,
                    format!(
                        "its waiting line is full (mode {}, max_queued {max})",
                        policy.mode
                    ),
                ),
                _ => {
                    slot.waiting.push_back((policy, park(run)));
                    Decision::Wait
                }
            },
        };
        self.waiting =
            self.waiting + usize::from(matches!(decision, Decision::Wait)) - replaced.len();
        Admission { decision, replaced }
    }

    /// A run ended: frees its place and hands out the waiting runs whose
    /// turn came, in arrival order. `removed` says whether a reload removed
    /// a waiting run's rule (such runs are passed over, not started).
    pub fn release(
        &mut self,
        key: &SlotKey,
        cancel: &CancelFlag,
        removed: impl Fn(&R) -> bool,
    ) -> Released<R> {
        let mut released = Released {
            start: Vec::new(),
            removed: Vec::new(),
        };
        let Some(slot) = self.slots.get_mut(key) else {
            return released;
        };
        slot.running.retain(|c| !c.same(cancel));
        while let Some((policy, _)) = slot.waiting.front()
            && slot.running.len() < policy.running_limit()
        {
            let Some((_, run)) = slot.waiting.pop_front() else {
                break;
            };
            self.waiting -= 1;
            if removed(&run) {
                released.removed.push(run);
                continue;
            }
            let cancel = CancelFlag::default();
            slot.running.push(cancel.clone());
            released.start.push((run, cancel));
        }
        if slot.running.is_empty() && slot.waiting.is_empty() {
            self.slots.remove(key);
        }
        released
    }
}

fn start_in<R>(slot: &mut Slot<R>, run: R) -> Decision<R> {
    let cancel = CancelFlag::default();
    slot.running.push(cancel.clone());
    Decision::Start(run, cancel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> SlotKey {
        SlotKey {
            rule: "r".into(),
            key: Some(k.into()),
        }
    }

    fn policy(mode: Mode, max_runs: u32, max_queued: Option<u32>) -> Policy {
        Policy {
            mode,
            max_runs,
            max_queued,
        }
    }

    /// Admits runs 1..=n; returns what started (with flags), waited and dropped.
    fn admit_all(
        slots: &mut Slots<u32>,
        p: Policy,
        n: u32,
    ) -> (Vec<(u32, CancelFlag)>, usize, Vec<u32>) {
        let (mut started, mut waited, mut dropped) = (Vec::new(), 0, Vec::new());
        for run in 1..=n {
            let admission = slots.admit(key("a"), p, run);
            dropped.extend(admission.replaced);
            match admission.decision {
                Decision::Start(run, cancel) => started.push((run, cancel)),
                Decision::Wait => waited += 1,
                Decision::Drop(run, _) => dropped.push(run),
            }
        }
        (started, waited, dropped)
    }

    #[test]
    fn parallel_runs_up_to_max_runs_and_the_rest_wait_in_arrival_order() {
        let mut slots = Slots::default();
        let (started, waited, dropped) = admit_all(&mut slots, policy(Mode::Parallel, 2, None), 5);
        assert_eq!(started.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 2]);
        assert_eq!((waited, dropped.len(), slots.waiting()), (3, 0, 3));
        let released = slots.release(&key("a"), &started[0].1, |_| false);
        assert_eq!(released.start.iter().map(|s| s.0).collect::<Vec<_>>(), [3]);
        let released = slots.release(&key("a"), &started[1].1, |_| false);
        assert_eq!(released.start.iter().map(|s| s.0).collect::<Vec<_>>(), [4]);
        assert_eq!(slots.waiting(), 1);
    }

    #[test]
    fn queued_runs_one_at_a_time_and_never_drops_without_max_queued() {
        let mut slots = Slots::default();
        let (started, waited, dropped) =
            admit_all(&mut slots, policy(Mode::Queued, 10, None), 1000);
        assert_eq!((started.len(), waited, dropped.len()), (1, 999, 0));
        let mut cancel = started[0].1.clone();
        for expected in 2..=1000 {
            let released = slots.release(&key("a"), &cancel, |_| false);
            assert_eq!(released.start.len(), 1);
            assert_eq!(released.start[0].0, expected);
            cancel = released.start[0].1.clone();
        }
        assert_eq!(slots.waiting(), 0);
        assert!(
            slots
                .release(&key("a"), &cancel, |_| false)
                .start
                .is_empty()
        );
        assert!(slots.slots.is_empty(), "an idle key keeps nothing");
    }

    #[test]
    fn max_queued_is_the_explicit_choice_to_drop() {
        let mut slots = Slots::default();
        let (started, waited, dropped) =
            admit_all(&mut slots, policy(Mode::Parallel, 1, Some(2)), 5);
        assert_eq!((started.len(), waited, dropped), (1, 2, vec![4, 5]));
        let mut slots = Slots::default();
        let (_, waited, dropped) = admit_all(&mut slots, policy(Mode::Queued, 1, Some(0)), 3);
        assert_eq!((waited, dropped), (0, vec![2, 3]));
    }

    #[test]
    fn single_drops_while_one_runs() {
        let mut slots = Slots::default();
        let (started, waited, dropped) = admit_all(&mut slots, policy(Mode::Single, 10, None), 3);
        assert_eq!((started.len(), waited, dropped), (1, 0, vec![2, 3]));
        assert!(
            slots
                .release(&key("a"), &started[0].1, |_| false)
                .start
                .is_empty()
        );
        let (started, _, _) = admit_all(&mut slots, policy(Mode::Single, 10, None), 1);
        assert_eq!(started.len(), 1, "free again once it finished");
    }

    #[test]
    fn restart_cancels_the_running_one_and_keeps_only_the_newest_waiting() {
        let mut slots = Slots::default();
        let (started, waited, dropped) = admit_all(&mut slots, policy(Mode::Restart, 10, None), 3);
        assert_eq!((started.len(), waited, dropped), (1, 2, vec![2]));
        assert!(
            started[0].1.is_cancelled(),
            "the running one is told to stop"
        );
        assert_eq!(slots.waiting(), 1);
        let released = slots.release(&key("a"), &started[0].1, |_| false);
        assert_eq!(released.start.iter().map(|s| s.0).collect::<Vec<_>>(), [3]);
        assert!(!released.start[0].1.is_cancelled());
    }

    #[test]
    fn keys_have_their_own_places() {
        let mut slots: Slots<u32> = Slots::default();
        let p = policy(Mode::Queued, 1, None);
        assert!(matches!(
            slots.admit(key("a"), p, 1).decision,
            Decision::Start(..)
        ));
        assert!(matches!(
            slots.admit(key("b"), p, 2).decision,
            Decision::Start(..)
        ));
        assert!(matches!(
            slots.admit(key("a"), p, 3).decision,
            Decision::Wait
        ));
    }

    #[test]
    fn runs_of_a_removed_rule_are_passed_over() {
        let mut slots = Slots::default();
        let (started, _, _) = admit_all(&mut slots, policy(Mode::Queued, 1, None), 4);
        let released = slots.release(&key("a"), &started[0].1, |run| *run < 4);
        assert_eq!(released.removed, [2, 3]);
        assert_eq!(released.start.iter().map(|s| s.0).collect::<Vec<_>>(), [4]);
        assert_eq!(slots.waiting(), 0);
    }

    #[test]
    fn a_waiting_run_keeps_its_rules_policy_and_its_place_after_a_reload() {
        let mut slots = Slots::default();
        let (started, waited, _) = admit_all(&mut slots, policy(Mode::Parallel, 1, None), 2);
        assert_eq!((started.len(), waited), (1, 1));
        // Reloaded with max_runs 3: a newer run does not overtake the waiting one.
        let (_, waited, _) = admit_all(&mut slots, policy(Mode::Parallel, 3, None), 1);
        assert_eq!(waited, 1);
        let released = slots.release(&key("a"), &started[0].1, |_| false);
        assert_eq!(
            released.start.iter().map(|s| s.0).collect::<Vec<_>>(),
            [2, 1]
        );
    }
}
