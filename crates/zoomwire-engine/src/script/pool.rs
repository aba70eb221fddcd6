//! The threads scripts run on: a fixed number of std threads with a large
//! native stack, each job answering through a oneshot.
//!
//! Scripts block (an effect waits on the runtime) and recurse (Rhai evaluates
//! by recursion, and a deep value is cloned and dropped by recursion), so they
//! never run on the async reactor and never on a default-sized stack. A job
//! first takes a free thread ([`ScriptPool::reserve`], first come first
//! served), so that its deadline can start when its script does: a burst of
//! runs waits for threads instead of timing out in a queue. Each
//! job installs its run (deadline, cancel flag, effects, memory budget) in
//! the worker's thread-locals; a panic in a job is caught, becomes that
//! job's error, and leaves the worker serving the next job.
//!
//! A job goes to a thread through a [`Board`]: a queue and the idle threads,
//! the last to go idle on top. Handing a job over wakes one idle thread, the
//! one that ran last (its stack and allocator arena are warm), and none when
//! every thread is busy (the first to finish takes it). A shared channel
//! behind a mutex woke two threads per job: the one waiting in the channel,
//! and, as it let go of the mutex, the next one, only to wait in its turn.

use parking_lot::Mutex;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rhai::{AST, Dynamic};
use std::collections::VecDeque;
use std::thread::Thread;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::ended_early;
pub use super::error::ScriptError;
use super::error::{Evaluation, memory_limit, script_error};
use super::limits::MIN_STACK_SIZE;
use super::memory::{budget_exceeded, enter_budget};
use super::run::{ActiveRun, enter_run, run_terminated, take_thrown};
use super::{Sandbox, panic_text, run_scope};
use crate::effects::gateway::RunEffects;

/// How long `run` waits past a job's deadline for the worker to notice it.
const DEADLINE_GRACE: Duration = Duration::from_millis(500);

/// One script run to execute.
pub struct ScriptJob {
    pub sandbox: Arc<Sandbox>,
    pub ast: Arc<AST>,
    pub event: Dynamic,
    pub meta: Dynamic,
    pub vars: Dynamic,
    pub effects: Arc<RunEffects>,
    /// The whole run's wall-clock deadline.
    pub deadline: Instant,
    /// Set by the caller to stop the run at its next check.
    pub cancel: Arc<AtomicBool>,
}

struct Work {
    job: ScriptJob,
    /// Deadline minus submission time, for the timeout message.
    timeout: Duration,
    /// Set when `run` stopped waiting for the answer.
    abandoned: Arc<AtomicBool>,
    reply: oneshot::Sender<Result<Dynamic, ScriptError>>,
    /// The thread's place, given back when the worker is done with the job
    /// (not when its caller stops waiting).
    _thread: OwnedSemaphorePermit,
}

/// A bounded pool of script threads.
pub struct ScriptPool {
    board: Arc<Board<Work>>,
    /// One permit per thread: a job holds one from before it is sent until
    /// its worker is done with it, so the board never holds more jobs
    /// than there are threads.
    free_threads: Arc<Semaphore>,
    threads: usize,
    spawn_error: Option<String>,
}

/// A script thread taken for one job ([`ScriptPool::reserve`]).
pub struct ReservedThread<'a> {
    pool: &'a ScriptPool,
    permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for ScriptPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptPool")
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

impl ScriptPool {
    /// Starts `threads` threads (at least one) with `stack_size` bytes of
    /// stack each (at least 16 MiB).
    pub fn new(threads: usize, stack_size: usize) -> ScriptPool {
        let board = Arc::new(Board::new());
        let mut started = 0;
        let mut spawn_error = None;
        for index in 0..threads.max(1) {
            let board = board.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("zoomwire-script-{index}"))
                .stack_size(stack_size.max(MIN_STACK_SIZE))
                .spawn(move || serve(&board, index));
            match spawned {
                Ok(_) => started += 1,
                Err(error) => {
                    tracing::error!(error = %error, "cannot start a script thread");
                    spawn_error = Some(error.to_string());
                }
            }
        }
        ScriptPool {
            board,
            free_threads: Arc::new(Semaphore::new(started)),
            threads: started,
            spawn_error,
        }
    }

    /// Threads that started.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Waits for a free thread, first come first served, for as long as it
    /// takes. The caller then starts its job's clock and runs it there.
    pub async fn reserve(&self) -> Result<ReservedThread<'_>, ScriptError> {
        self.check_started()?;
        match self.free_threads.clone().acquire_owned().await {
            Ok(permit) => Ok(ReservedThread { pool: self, permit }),
            Err(_) => Err(ScriptError::runtime("the script pool has shut down")),
        }
    }

    /// Runs a job on a script thread and waits for its result. Waits for a
    /// free thread at most until the job's deadline.
    pub async fn run(&self, job: ScriptJob) -> Result<Dynamic, ScriptError> {
        self.check_started()?;
        let timeout = round_timeout(job.deadline.saturating_duration_since(Instant::now()));
        let deadline = tokio::time::Instant::from_std(job.deadline);
        let free = self.free_threads.clone().acquire_owned();
        match tokio::time::timeout_at(deadline, free).await {
            Err(_) => Err(ScriptError::Timeout { after: timeout }),
            Ok(Err(_)) => Err(ScriptError::runtime("the script pool has shut down")),
            Ok(Ok(permit)) => ReservedThread { pool: self, permit }.run(job).await,
        }
    }

    fn check_started(&self) -> Result<(), ScriptError> {
        if self.threads > 0 {
            return Ok(());
        }
        let why = self.spawn_error.as_deref().unwrap_or("none was started");
        Err(ScriptError::runtime(format!(
            "no script thread is running: {why}"
        )))
    }
}

impl ReservedThread<'_> {
    /// Runs the job on the reserved thread and waits for its result, at
    /// most until a little past its deadline.
    pub async fn run(self, job: ScriptJob) -> Result<Dynamic, ScriptError> {
        let deadline = job.deadline;
        let timeout = round_timeout(deadline.saturating_duration_since(Instant::now()));
        let abandoned = Arc::new(AtomicBool::new(false));
        let mut abandon_on_drop = AbandonOnDrop(Some(abandoned.clone()));
        let (reply, answer) = oneshot::channel();
        let work = Work {
            job,
            timeout,
            abandoned,
            reply,
            _thread: self.permit,
        };
        // Never waits: the board holds as many jobs as there are threads,
        // and this job holds one of their permits.
        self.pool.board.post(work);
        let answer_deadline = tokio::time::Instant::from_std(deadline) + DEADLINE_GRACE;
        match tokio::time::timeout_at(answer_deadline, answer).await {
            Ok(Ok(result)) => {
                abandon_on_drop.disarm();
                result
            }
            Ok(Err(_)) => Err(ScriptError::runtime(
                "the script thread stopped before answering",
            )),
            Err(_) => Err(ScriptError::Timeout { after: timeout }),
        }
    }
}

/// The timeout a deadline stands for, without the microseconds spent between
/// computing the deadline and submitting the job: to 10 ms from a second up,
/// else to the millisecond.
fn round_timeout(remaining: Duration) -> Duration {
    let step = if remaining >= Duration::from_secs(1) {
        10
    } else {
        1
    };
    let millis = (remaining.as_secs_f64() * 1000.0 / step as f64).round() as u64 * step;
    Duration::from_millis(millis)
}

/// Tells the worker its caller is gone (dropped or timed out).
struct AbandonOnDrop(Option<Arc<AtomicBool>>);

impl AbandonOnDrop {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if let Some(flag) = &self.0 {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

impl Drop for ScriptPool {
    /// Lets the threads go once they have done the jobs handed over.
    fn drop(&mut self) {
        self.board.close();
    }
}

/// The jobs handed over and not yet taken, and the threads waiting for one.
struct Board<T> {
    state: Mutex<BoardState<T>>,
}

struct BoardState<T> {
    jobs: VecDeque<T>,
    /// Idle threads by index, the last to go idle on top.
    idle: Vec<(usize, Thread)>,
    /// Set when the pool is dropped: threads end once `jobs` is empty.
    closed: bool,
}

impl<T> Board<T> {
    fn new() -> Board<T> {
        Board {
            state: Mutex::new(BoardState {
                jobs: VecDeque::new(),
                idle: Vec::new(),
                closed: false,
            }),
        }
    }

    /// Hands a job over, waking the idle thread that went idle last, if any
    /// (else a busy thread takes it when done).
    fn post(&self, work: T) {
        let waking = {
            let mut state = self.state.lock();
            state.jobs.push_back(work);
            state.idle.pop()
        };
        if let Some((_, thread)) = waking {
            thread.unpark();
        }
    }

    /// The next job for thread `index`, waiting idle until there is one;
    /// `None` once the pool is dropped and no job is left.
    fn take(&self, index: usize) -> Option<T> {
        let mut state = self.state.lock();
        loop {
            if let Some(work) = state.jobs.pop_front() {
                // Woken without being taken off the idle list (a spurious
                // wake-up that found a job): a job must not wake it now.
                state.idle.retain(|(idle, _)| *idle != index);
                return Some(work);
            }
            if state.closed {
                return None;
            }
            if !state.idle.iter().any(|(idle, _)| *idle == index) {
                state.idle.push((index, std::thread::current()));
            }
            parking_lot::MutexGuard::unlocked(&mut state, std::thread::park);
        }
    }

    /// Ends the threads once the jobs handed over are done.
    fn close(&self) {
        let idle = {
            let mut state = self.state.lock();
            state.closed = true;
            std::mem::take(&mut state.idle)
        };
        for (_, thread) in idle {
            thread.unpark();
        }
    }
}

/// A worker: takes jobs until the pool is dropped.
fn serve(board: &Board<Work>, index: usize) {
    while let Some(work) = board.take(index) {
        if work.reply.is_closed() {
            continue;
        }
        let result = catch_unwind(AssertUnwindSafe(|| execute(&work))).unwrap_or_else(|panic| {
            Err(ScriptError::runtime(format!(
                "internal error: the script run panicked: {}",
                panic_text(panic.as_ref())
            )))
        });
        let Work { job, reply, .. } = work;
        // The job's values are dropped here, on the large stack.
        drop(job);
        let _ = reply.send(result);
    }
}

fn execute(work: &Work) -> Result<Dynamic, ScriptError> {
    let job = &work.job;
    if job.cancel.load(Ordering::Relaxed) || work.abandoned.load(Ordering::Relaxed) {
        return Err(ScriptError::Cancelled);
    }
    if Instant::now() >= job.deadline {
        return Err(ScriptError::Timeout {
            after: work.timeout,
        });
    }
    let limits = job.sandbox.limits();
    let evaluation = Evaluation::script(work.timeout, limits);
    let _budget = enter_budget(limits.max_memory);
    let _run = enter_run(ActiveRun::new(
        job.deadline,
        job.cancel.clone(),
        work.abandoned.clone(),
        Some(job.effects.clone()),
    ));
    let engine = job.sandbox.script_engine();
    let mut scope = run_scope(&job.event, &job.meta, &job.vars);
    let outcome = ended_early(
        engine.eval_ast_with_scope::<Dynamic>(&mut scope, &job.ast),
        run_terminated(),
    );
    drop(scope);
    let thrown = take_thrown();
    // A native call that passed the budget as the script's last step ends
    // it without another operation to notice.
    if budget_exceeded() {
        return Err(memory_limit(evaluation));
    }
    match outcome {
        Ok(value) => job.sandbox.check_result(value),
        Err(error) => Err(script_error(engine, error, evaluation, &thrown)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn pools_and_runs_cross_threads() {
        assert_send_sync::<ScriptPool>();
        assert_send_sync::<Sandbox>();
        assert_send_sync::<ScriptJob>();
        fn future_of(pool: &ScriptPool, job: ScriptJob) {
            let future = pool.run(job);
            assert_send(&future);
        }
        let _ = future_of;
    }

    #[test]
    fn a_board_hands_every_job_to_one_thread_and_lets_them_go_when_closed() {
        let board = Arc::new(Board::new());
        let done = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..3)
            .map(|index| {
                let (board, done) = (board.clone(), done.clone());
                std::thread::spawn(move || {
                    while let Some(job) = board.take(index) {
                        done.lock().push(job);
                    }
                })
            })
            .collect();
        for job in 0..1000 {
            board.post(job);
            if job % 100 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        board.close();
        for thread in threads {
            thread.join().unwrap();
        }
        let mut done = std::mem::take(&mut *done.lock());
        done.sort_unstable();
        assert_eq!(done, (0..1000).collect::<Vec<_>>(), "each job once");
    }

    #[test]
    fn an_idle_board_wakes_the_thread_that_went_idle_last() {
        let board = Board::new();
        board.state.lock().idle.push((0, std::thread::current()));
        board.state.lock().idle.push((1, std::thread::current()));
        board.post(7);
        let idle: Vec<usize> = board.state.lock().idle.iter().map(|(i, _)| *i).collect();
        assert_eq!(idle, [0], "thread 1 went idle last and was woken");
        assert_eq!(board.take(1), Some(7));
    }

    #[test]
    fn timeouts_are_rounded_to_what_was_meant() {
        let round = |micros| round_timeout(Duration::from_micros(micros));
        assert_eq!(round(299_990), Duration::from_millis(300));
        assert_eq!(round(1_999_700), Duration::from_secs(2));
        assert_eq!(round(29_996_000), Duration::from_secs(30));
        assert_eq!(round(0), Duration::ZERO);
    }
}
