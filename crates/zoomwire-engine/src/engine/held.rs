//! The events that waiting runs keep in memory, within a budget of bytes.
//!
//! A run that waits its turn needs its event only when it starts. Where the
//! journal keeps events, a waiting run can leave its event there and read it
//! back at its start (`Executor::park`), so that a burst of thousands of
//! waiting runs costs a small handle each. Reading back costs a read of the
//! store and a second parse of the body (`zoomwire bench`, durable journal:
//! ~7% of the async workers' time), and most waits are short. So waiting
//! runs keep their events while the bodies they keep total at most a budget
//! ([`DEFAULT_BUDGET`]), and only the runs beyond it leave theirs in the
//! journal. A [`Hold`] is a run's share of the budget: given back when the
//! run starts or is dropped, whichever way it goes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes of event bodies (as received, compact JSON) that waiting runs may
/// keep: about 1,000 events of the usual size. A body that a slow condition
/// had to turn into a script value keeps that value too, so the memory it
/// costs is a few times the bytes counted.
pub(crate) const DEFAULT_BUDGET: usize = 1 << 20;

/// The budget and what is taken of it, shared by the holds.
#[derive(Debug, Clone)]
pub(crate) struct HeldEvents {
    budget: usize,
    taken: Arc<AtomicUsize>,
}

/// A waiting run's share of the budget; given back when dropped.
#[derive(Debug)]
pub(crate) struct Hold {
    bytes: usize,
    taken: Arc<AtomicUsize>,
}

impl HeldEvents {
    pub(crate) fn new(budget: usize) -> HeldEvents {
        HeldEvents {
            budget,
            taken: Arc::default(),
        }
    }

    /// A share of `bytes`, if the budget has room for it.
    pub(crate) fn hold(&self, bytes: usize) -> Option<Hold> {
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
                taken
                    .checked_add(bytes)
                    .filter(|&total| total <= self.budget)
            })
            .ok()?;
        Some(Hold {
            bytes,
            taken: self.taken.clone(),
        })
    }

    /// Bytes held now.
    #[cfg(test)]
    pub(crate) fn taken(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }
}

impl Default for HeldEvents {
    fn default() -> HeldEvents {
        HeldEvents::new(DEFAULT_BUDGET)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.taken.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_are_given_while_the_budget_has_room_and_given_back_when_dropped() {
        let held = HeldEvents::new(100);
        let first = held.hold(60).expect("room for 60");
        assert!(held.hold(50).is_none(), "110 is past the budget");
        let second = held.hold(40).expect("exactly the budget");
        assert_eq!(held.taken(), 100);
        assert!(held.hold(1).is_none());
        drop(first);
        assert_eq!(held.taken(), 40);
        let third = held.hold(50).expect("room again");
        drop((second, third));
        assert_eq!(held.taken(), 0);
    }

    #[test]
    fn a_zero_budget_holds_nothing_and_an_overflow_is_refused() {
        assert!(HeldEvents::new(0).hold(1).is_none());
        let held = HeldEvents::new(usize::MAX);
        let _most = held.hold(usize::MAX - 1).unwrap();
        assert!(held.hold(2).is_none(), "no wrap-around");
    }
}
