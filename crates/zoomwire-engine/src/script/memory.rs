//! The memory budget of one evaluation: a script run, a condition, or the
//! scripts folder's top-level code at load.
//!
//! The global allocator ([`super::allocator`]) counts the bytes each thread
//! holds. An evaluation runs on one thread, so its budget is a limit on that
//! thread's count: what it held at the start plus `max_memory`. The
//! allocator raises a flag when an allocation passes it; `on_progress` reads
//! the flag before every operation and ends the run, and the pool reads it
//! once more when the script returns. So a run stops within one operation
//! of passing its budget, and a native function that allocates without
//! calling back (`to_string` of a big array, `replace`, `split`) is held to
//! Rhai's size limits before it allocates ([`super::guards`]).
//!
//! Memory is counted where it is allocated: memory a run allocates and
//! another thread frees stays on the run's count (the copy of an effect
//! record the journal's writer frees), and memory made elsewhere must not be
//! freed on a script thread, or the run would be credited for it. Effects
//! therefore run on the runtime's threads and the run keeps a copy of their
//! answers ([`crate::effects::gateway`]).

use super::allocator;

/// A budget's use past which its end gives freed pages back to the system.
const RELEASE_AFTER: isize = 8 << 20;

/// Restores the thread's previous limit when dropped, and gives the freed
/// memory back to the system when the budget's peak use was large.
#[must_use = "the budget ends when the guard is dropped"]
pub(crate) struct BudgetGuard {
    previous_limit: isize,
    previous_peak: isize,
    start: isize,
}

impl Drop for BudgetGuard {
    fn drop(&mut self) {
        let used = allocator::peak_bytes() - self.start;
        allocator::set_limit(self.previous_limit);
        allocator::keep_peak(self.previous_peak);
        if used > RELEASE_AFTER {
            allocator::release_free_memory();
        }
    }
}

/// Holds the calling thread to `max_bytes` more than it holds now, until the
/// guard is dropped.
pub(crate) fn enter_budget(max_bytes: usize) -> BudgetGuard {
    let previous_limit = allocator::limit();
    let previous_peak = allocator::peak_bytes();
    let start = allocator::live_bytes();
    let max_bytes = isize::try_from(max_bytes).unwrap_or(isize::MAX);
    allocator::set_limit(start.saturating_add(max_bytes));
    BudgetGuard {
        previous_limit,
        previous_peak,
        start,
    }
}

/// Starts counting the current budget's excess afresh from what the thread
/// holds now (for the next module of a load, after one that failed).
pub(crate) fn rearm_budget() {
    let peak = allocator::peak_bytes();
    allocator::set_limit(allocator::limit());
    allocator::keep_peak(peak);
}

/// Whether the calling thread passed its budget since the budget began.
#[inline]
pub(crate) fn budget_exceeded() -> bool {
    allocator::exceeded()
}

/// Formats a byte count for messages: `64MiB`, `1KiB`, `1000 bytes`.
pub fn format_bytes(bytes: usize) -> String {
    const UNITS: [(usize, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (size, unit) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_counts_from_what_the_thread_already_holds_and_nests() {
        std::thread::spawn(|| {
            let ballast = vec![0u8; 8 << 20];
            let outer = enter_budget(4 << 20);
            let inside = vec![0u8; 2 << 20];
            assert!(!budget_exceeded(), "what was held before is not counted");
            {
                let _inner = enter_budget(1 << 20);
                let more = vec![0u8; 2 << 20];
                assert!(budget_exceeded());
                drop(more);
            }
            assert!(!budget_exceeded(), "the outer budget is back");
            let more = vec![0u8; 3 << 20];
            assert!(budget_exceeded());
            drop((more, inside, outer, ballast));
            assert!(!budget_exceeded());
        })
        .join()
        .unwrap();
    }

    /// Answers every effect with a string of `0` bytes.
    struct BigAnswers(usize);

    impl crate::effects::Effects for BigAnswers {
        fn perform<'a>(
            &'a self,
            _context: &'a crate::effects::EffectContext,
            _request: &'a crate::effects::EffectRequest,
        ) -> crate::effects::BoxFuture<'a, Result<serde_json::Value, crate::effects::EffectError>>
        {
            let size = self.0;
            Box::pin(async move { Ok(serde_json::Value::String("0".repeat(size))) })
        }
    }

    #[test]
    fn an_effect_answer_made_on_the_runtime_is_not_freed_on_the_script_thread() {
        use crate::effects::capability::{Capability, CapabilitySet};
        use crate::effects::gateway::RunEffects;
        use std::sync::Arc;
        use std::time::{Duration, Instant};

        let runtime = tokio::runtime::Runtime::new().unwrap();
        let capabilities = CapabilitySet::new(vec![Capability::Slack]);
        let context = crate::effects::EffectContext {
            rule: Arc::from("rule-a"),
            run_id: Arc::from("run-1"),
            deadline: Instant::now() + Duration::from_secs(5),
            http_hosts: capabilities.http_hosts(),
            download_token: None,
            zoom_account: Default::default(),
        };
        let effects = Arc::new(RunEffects::new(
            context,
            capabilities,
            Arc::new(BigAnswers(1 << 20)),
            runtime.handle().clone(),
        ));
        let script_thread = effects.clone();
        let (answers, held) = std::thread::spawn(move || {
            let before = allocator::live_bytes();
            let answers: Vec<_> = (0..4)
                .map(|_| {
                    script_thread
                        .call(
                            "slack.post",
                            serde_json::json!({"channel": "#a", "text": "x"}),
                        )
                        .unwrap()
                })
                .collect();
            (answers, allocator::live_bytes() - before)
        })
        .join()
        .unwrap();
        // Each call leaves two copies made here (the record's and the
        // script's); an original freed here would take one of them back.
        assert!(
            held >= 8 << 20,
            "the script thread holds its eight copies and was credited for none of the originals: {held}"
        );
        assert_eq!(answers.len(), 4);
        effects.release_answers();
    }

    #[test]
    fn formats_byte_counts() {
        assert_eq!(format_bytes(64 << 20), "64MiB");
        assert_eq!(format_bytes(1024), "1KiB");
        assert_eq!(format_bytes(1000), "1000 bytes");
        assert_eq!(format_bytes(3 << 30), "3GiB");
    }
}
