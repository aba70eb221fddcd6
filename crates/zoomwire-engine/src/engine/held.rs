//! The events that waiting runs keep in memory, within a budget of bytes.
//!
//! A run that waits its turn needs its event only when it starts. Where the
//! journal keeps events, a waiting run can leave its event there and read it
//! back at its start (`Executor::park`), so that a burst of thousands of
//! waiting runs costs a small handle each. Reading back costs a read of the
//! store and a second parse of the body (`zoomwire bench`, durable journal:
//! ~7% of the async workers' time), and most waits are short. So waiting
//! runs keep their events while what they keep ([`cost`]) totals at most a
//! budget ([`DEFAULT_BUDGET`]), and only the runs beyond it leave theirs in
//! the journal. A [`Hold`] is a run's share of the budget: given back when
//! the run starts or is dropped, whichever way it goes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::event::Event;

/// Bytes that waiting runs may keep of their events ([`cost`]): about 1,000
/// events of the usual size, as received.
pub(crate) const DEFAULT_BUDGET: usize = 1 << 20;

/// What an event's script value (built once a slow condition or a script
/// needed it) costs: this many bytes per byte of its body and
/// [`SCRIPT_VALUE_BASE`] more, rounded up from Zoom's sample events (3.1 to
/// 4.6 bytes per byte; 1,152 bytes for the 133 of the smallest; checked by
/// `the_estimate_covers_the_script_value_of_zooms_sample_events`).
const SCRIPT_VALUE_PER_BYTE: usize = 5;
const SCRIPT_VALUE_BASE: usize = 1024;

/// The bytes keeping `event` costs, estimated: its body as received, and
/// its script value when one was built.
pub(crate) fn cost(event: &Event) -> usize {
    let body = event.raw.len();
    if !event.body_is_built() {
        return body;
    }
    body.saturating_mul(1 + SCRIPT_VALUE_PER_BYTE)
        .saturating_add(SCRIPT_VALUE_BASE)
}

/// The budget and what is taken of it, shared by the holds.
pub(crate) struct HeldEvents {
    budget: usize,
    taken: Arc<AtomicUsize>,
}

/// A waiting run's share of the budget; given back when dropped.
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
    fn the_estimate_covers_the_script_value_of_zooms_sample_events() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/events");
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let event = Event::parse(&text, crate::event::Source::Test).unwrap();
            assert_eq!(cost(&event), event.raw.len(), "no script value yet");
            // Counted on this thread by the crate's allocator.
            let before = crate::script::allocator::live_bytes();
            let value = event.body();
            let built = crate::script::allocator::live_bytes() - before;
            assert!(!value.is_unit());
            let estimate = cost(&event) - event.raw.len();
            assert!(
                usize::try_from(built).unwrap() <= estimate,
                "{}: a script value of {built} bytes, estimated {estimate}",
                path.display()
            );
        }
    }

    #[test]
    fn a_zero_budget_holds_nothing_and_an_overflow_is_refused() {
        assert!(HeldEvents::new(0).hold(1).is_none());
        let held = HeldEvents::new(usize::MAX);
        let _most = held.hold(usize::MAX - 1).unwrap();
        assert!(held.hold(2).is_none(), "no wrap-around");
    }
}
