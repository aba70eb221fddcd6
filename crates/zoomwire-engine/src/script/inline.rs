//! Scripts run on the async runtime's own threads where they can, and move
//! to a script thread ([`super::pool`]) where they must wait.
//!
//! Handing a run to a script thread and its answer back costs two wake-ups
//! and two switches, more than the script itself in a rule that reads a few
//! fields and posts. So a run first executes on the runtime thread that
//! holds it, when that thread's stack is as large as a script thread's (the
//! daemon's runtime: [`RUNTIME_STACK_SIZE`], marked by
//! [`runtime_thread_started`]), for at most [`INLINE_TIME`]. There it stays
//! a computation: the first call that would wait (an effect other than the
//! one the script ends with, `now()`), or running past that time, ends it
//! before anything is done, and the run starts over on a script thread,
//! which sees none of it. Its log lines (`log::*`, `print`, `debug`) are
//! held meanwhile (at most `run::MAX_HELD_LINES`, then it moves) and written
//! out, with the times they were written, once it stays: a rule that logs
//! and posts runs here too. The effect the script ends with
//! ([`super::last_effect`]) is started where it is when that needs no wait
//! (`RunEffects::begins_without_blocking`); from then on the run finishes
//! there. Every limit holds as on a script thread: the same deadline,
//! cancellation, operations and memory budget, checked the same way.

use std::cell::Cell;
use std::time::Duration;

use super::pool::ScriptJob;

/// The stack of the daemon's runtime threads: the default `stack_size` of
/// script threads, so that scripts may run on them (address space, mostly
/// untouched).
pub const RUNTIME_STACK_SIZE: usize = 64 * 1024 * 1024;

/// How long a run may execute on a runtime thread before it moves: a script
/// that reads fields and posts takes tens of microseconds, and the thread
/// has the connection and the other runs to serve.
pub(crate) const INLINE_TIME: Duration = Duration::from_micros(500);

thread_local! {
    /// The stack this thread was started with, when scripts may use it.
    static STACK_SIZE: Cell<usize> = const { Cell::new(0) };
}

/// Marks the calling thread, started with [`RUNTIME_STACK_SIZE`] of stack,
/// as one scripts may run on: the runtime's `on_thread_start`.
pub fn runtime_thread_started() {
    STACK_SIZE.with(|size| size.set(RUNTIME_STACK_SIZE));
}

/// A multi-threaded runtime whose threads scripts may run on: the
/// daemon's, and the tests'.
pub fn runtime_builder() -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .enable_all()
        .thread_stack_size(RUNTIME_STACK_SIZE)
        .on_thread_start(runtime_thread_started);
    builder
}

/// Whether `job` may start on this thread: its stack is large enough, and
/// the effect the script may end with can be started without a wait.
pub(crate) fn may_start_here(job: &ScriptJob) -> bool {
    STACK_SIZE.with(Cell::get) >= job.sandbox.limits().stack_size
        && (job.last_effects.is_empty() || job.effects.marks_without_blocking())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::SandboxLimits;

    #[test]
    fn runtime_threads_have_a_script_threads_default_stack() {
        assert_eq!(RUNTIME_STACK_SIZE, SandboxLimits::default().stack_size);
    }
}
