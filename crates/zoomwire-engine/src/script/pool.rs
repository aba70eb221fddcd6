//! The threads scripts run on: up to a fixed number of std threads with a
//! large native stack, each job answering through a oneshot. One starts with
//! the pool; the others start as jobs first need them (never fewer threads
//! than jobs holding a place) and then stay: an idle daemon does not keep
//! dozens of stacks it has not used yet.
//!
//! Scripts block (an effect waits on the runtime) and recurse (Rhai evaluates
//! by recursion, and a deep value is cloned and dropped by recursion), so they
//! never run on a default-sized stack, and on the async runtime's threads
//! only until they would wait ([`super::inline`]): a job first runs on the
//! runtime thread that holds it when that thread's stack allows, and comes
//! here when it must wait or runs long. Here a job first takes a free
//! thread ([`ScriptPool::reserve`], first come first served), so that its
//! deadline can start when its script does: a burst of runs waits for
//! threads instead of timing out in a queue. Each job installs its run
//! (deadline, cancel flag, effects, memory budget) in the worker's
//! thread-locals; a panic in a job is caught, becomes that job's error, and
//! leaves the worker serving the next job.
//!
//! The workers wait on one queue with a condition variable ([`Queue`]): a job
//! wakes one idle thread. They used to share a tokio receiver behind a
//! mutex, and a job woke two: the thread that took it, and the next idle one
//! in line for the mutex, which only went back to sleep on the channel. In
//! `zoomwire bench`'s latency phase (memory journal, 2,000 events/s) that was
//! 2.9 voluntary switches of the script threads per run, where a run that
//! posts needs 2 (its wake for the job, its wait for the effect's answer);
//! with the queue 2.0, and the script threads' CPU 10 to 19% less. Measured
//! in the 100k burst and not kept: a LIFO board of idle threads, crossbeam's
//! and flume's multi-consumer channels (crossbeam: the durable journal's
//! daemon switched 1.23-1.46x as often, its receivers spin and yield before
//! they sleep); a LIFO hand-off again (stop 27, branch `wt/mpool27-lifo`: CPU
//! per event and switches within the noise). In a burst every thread runs
//! jobs whatever the hand-off: each run waits for its effects, so the pool
//! is full and a warm few threads could not do the work.

use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rhai::{AST, Dynamic};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::ended_early;
pub use super::error::ScriptError;
use super::error::{Evaluation, memory_limit, script_error};
use super::inline;
use super::limits::MIN_STACK_SIZE;
use super::memory::{budget_exceeded, enter_budget};
use super::run::{
    ActiveRun, MOVED_TOKEN, enter_run, may_move, release_held_logs, run_terminated, take_thrown,
};
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
    /// The calls of effects left to the run that may end the script: its
    /// caller then awaits [`super::last_effect::finish`].
    pub last_effects: super::last_effect::LastEffects,
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

/// The jobs sent and not yet taken, and the idle threads waiting for one.
struct Queue<T> {
    jobs: Mutex<Jobs<T>>,
    /// Signalled once per job sent: one idle thread wakes for it.
    sent: Condvar,
}

struct Jobs<T> {
    waiting: VecDeque<T>,
    /// Set when the pool is dropped: threads end once the queue is empty.
    closed: bool,
}

impl<T> Queue<T> {
    fn new() -> Queue<T> {
        Queue {
            jobs: Mutex::new(Jobs {
                waiting: VecDeque::new(),
                closed: false,
            }),
            sent: Condvar::new(),
        }
    }

    /// Queues `work` for the next idle thread; false if the pool is gone.
    fn send(&self, work: T) -> bool {
        let mut jobs = self.jobs.lock();
        if jobs.closed {
            return false;
        }
        jobs.waiting.push_back(work);
        drop(jobs);
        self.sent.notify_one();
        true
    }

    /// The next job, waiting for one; `None` once the pool is dropped and
    /// every job sent was taken.
    fn take(&self) -> Option<T> {
        let mut jobs = self.jobs.lock();
        loop {
            if let Some(work) = jobs.waiting.pop_front() {
                return Some(work);
            }
            if jobs.closed {
                return None;
            }
            self.sent.wait(&mut jobs);
        }
    }

    fn close(&self) {
        self.jobs.lock().closed = true;
        self.sent.notify_all();
    }
}

/// A bounded pool of script threads.
pub struct ScriptPool {
    queue: Arc<Queue<Work>>,
    /// One permit per thread the pool may run: a job holds one from before
    /// it is sent until its worker is done with it, so the queue never
    /// holds more jobs than there are threads.
    free_threads: Arc<Semaphore>,
    /// The most threads (0: the first could not start).
    threads: usize,
    workers: Mutex<Workers>,
    spawn_error: Option<String>,
    /// Jobs sent to the threads (the rest ran on the runtime's).
    sent: AtomicUsize,
}

/// The threads started so far, and what starts another.
struct Workers {
    queue: Arc<Queue<Work>>,
    stack_size: usize,
    started: usize,
}

impl Workers {
    /// Starts one more thread; a failure is logged here.
    fn start_one(&mut self) -> std::io::Result<()> {
        let queue = self.queue.clone();
        std::thread::Builder::new()
            .name(format!("zoomwire-script-{}", self.started))
            .stack_size(self.stack_size.max(MIN_STACK_SIZE))
            .spawn(move || serve(&queue))
            .inspect_err(|error| tracing::error!(error = %error, "cannot start a script thread"))?;
        self.started += 1;
        Ok(())
    }
}

/// A script thread's place taken for one job ([`ScriptPool::reserve`]).
pub struct ReservedThread<'a> {
    pool: &'a ScriptPool,
    permit: OwnedSemaphorePermit,
}

impl Drop for ScriptPool {
    /// Its threads end once they have taken the jobs already sent.
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl std::fmt::Debug for ScriptPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptPool")
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

impl ScriptPool {
    /// A pool of up to `threads` threads (at least one) with `stack_size`
    /// bytes of stack each (at least 16 MiB); the first starts now.
    pub fn new(threads: usize, stack_size: usize) -> ScriptPool {
        let queue = Arc::new(Queue::new());
        let mut workers = Workers {
            queue: queue.clone(),
            stack_size,
            started: 0,
        };
        let (threads, spawn_error) = match workers.start_one() {
            Ok(()) => (threads.max(1), None),
            Err(error) => (0, Some(error.to_string())),
        };
        ScriptPool {
            queue,
            free_threads: Arc::new(Semaphore::new(threads)),
            threads,
            workers: Mutex::new(workers),
            spawn_error,
            sent: AtomicUsize::new(0),
        }
    }

    /// The most threads the pool runs.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Jobs run on the pool's threads so far: those that could not start
    /// on a runtime thread, or moved from one ([`inline`]).
    pub fn jobs_sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    /// Threads started so far.
    pub fn started(&self) -> usize {
        self.workers.lock().started
    }

    /// Starts a thread if fewer run than jobs hold a place (the caller
    /// holds one), so that every job sent finds a thread.
    fn ensure_worker(&self) -> Result<(), ScriptError> {
        let held = self.threads - self.free_threads.available_permits();
        let mut workers = self.workers.lock();
        if workers.started >= held {
            return Ok(());
        }
        workers
            .start_one()
            .map_err(|error| ScriptError::runtime(format!("cannot start a script thread: {error}")))
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
    /// Runs the job: on this runtime thread while it can ([`inline`]),
    /// else on a script thread, waiting for its result at most until a
    /// little past its deadline.
    pub async fn run(self, job: ScriptJob) -> Result<Dynamic, ScriptError> {
        let deadline = job.deadline;
        let timeout = round_timeout(deadline.saturating_duration_since(Instant::now()));
        if inline::may_start_here(&job)
            && let Some(result) = run_here(&job, timeout)
        {
            return result;
        }
        self.pool.ensure_worker()?;
        self.pool.sent.fetch_add(1, Ordering::Relaxed);
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
        // The queue holds at most as many jobs as there are threads: this
        // job holds one of their permits.
        if !self.pool.queue.send(work) {
            return Err(ScriptError::runtime("the script pool has shut down"));
        }
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

/// A worker: takes jobs until the pool is dropped.
fn serve(queue: &Queue<Work>) {
    while let Some(work) = queue.take() {
        if work.reply.is_closed() {
            continue;
        }
        let result = catch_unwind(AssertUnwindSafe(|| {
            execute(&work.job, work.timeout, &work.abandoned, None)
        }))
        .unwrap_or_else(|panic| Some(Err(panicked(panic.as_ref()))))
        .unwrap_or_else(|| {
            Err(ScriptError::runtime(
                "internal error: a script thread's run moved",
            ))
        });
        let Work {
            job,
            reply,
            _thread: place,
            ..
        } = work;
        // The job's values are dropped here, on the large stack.
        drop(job);
        // The place is given back before the answer, so a caller that runs
        // its next job on hearing it finds this thread's place free (and
        // does not start another thread for it).
        drop(place);
        let _ = reply.send(result);
    }
}

/// Runs the job on this runtime thread ([`inline`]): its result, or `None`
/// when it moved (nothing it did was seen) and is for a script thread.
fn run_here(job: &ScriptJob, timeout: Duration) -> Option<Result<Dynamic, ScriptError>> {
    let move_at = Instant::now() + inline::INLINE_TIME;
    let abandoned = Arc::new(AtomicBool::new(false));
    catch_unwind(AssertUnwindSafe(|| {
        execute(job, timeout, &abandoned, Some(move_at))
    }))
    .unwrap_or_else(|panic| Some(Err(panicked(panic.as_ref()))))
}

fn panicked(panic: &(dyn std::any::Any + Send)) -> ScriptError {
    ScriptError::runtime(format!(
        "internal error: the script run panicked: {}",
        panic_text(panic)
    ))
}

/// Evaluates the job on this thread: on a script thread, or on a runtime
/// thread until `move_at` or its first wait (`None` when it moved).
fn execute(
    job: &ScriptJob,
    timeout: Duration,
    abandoned: &Arc<AtomicBool>,
    move_at: Option<Instant>,
) -> Option<Result<Dynamic, ScriptError>> {
    if job.cancel.load(Ordering::Relaxed) || abandoned.load(Ordering::Relaxed) {
        return Some(Err(ScriptError::Cancelled));
    }
    if Instant::now() >= job.deadline {
        return Some(Err(ScriptError::Timeout { after: timeout }));
    }
    let limits = job.sandbox.limits();
    let evaluation = Evaluation::script(timeout, limits);
    let _budget = enter_budget(limits.max_memory);
    let mut run = ActiveRun::new(
        job.deadline,
        job.cancel.clone(),
        abandoned.clone(),
        Some(job.effects.clone()),
    )
    .with_last_effects(job.last_effects.clone());
    if let Some(move_at) = move_at {
        run = run.inline(move_at);
    }
    let _run = enter_run(run);
    let engine = job.sandbox.script_engine();
    let mut scope = run_scope(&job.event, &job.meta, &job.vars);
    let outcome = ended_early(
        engine.eval_ast_with_scope::<Dynamic>(&mut scope, &job.ast),
        run_terminated(),
    );
    drop(scope);
    if run_terminated() == Some(MOVED_TOKEN) && may_move() {
        return None;
    }
    // It ended here: the lines it held while it might have moved are its.
    release_held_logs();
    Some(evaluated(job, engine, outcome, evaluation))
}

/// The run's result from its evaluation's outcome.
fn evaluated(
    job: &ScriptJob,
    engine: &rhai::Engine,
    outcome: Result<Dynamic, Box<rhai::EvalAltResult>>,
    evaluation: Evaluation,
) -> Result<Dynamic, ScriptError> {
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
    use crate::script::voluntary_switches;

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
    fn a_job_wakes_one_idle_thread() {
        // Idle threads waiting on a shared receiver behind a mutex woke two
        // a job: the one that took it, and the next in line for the mutex,
        // which went back to sleep on the channel (2.0 switches a job here).
        let queue = Arc::new(Queue::new());
        let (done, finished) = std::sync::mpsc::channel();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (queue, done) = (queue.clone(), done.clone());
                std::thread::spawn(move || {
                    let before = voluntary_switches();
                    while let Some(job) = queue.take() {
                        done.send(job).unwrap();
                    }
                    voluntary_switches() - before
                })
            })
            .collect();
        // One job at a time, as runs come at a steady rate: each finds
        // every thread idle.
        let jobs = 200;
        for job in 0..jobs {
            std::thread::sleep(Duration::from_micros(200));
            assert!(queue.send(job));
            assert_eq!(finished.recv().unwrap(), job);
        }
        queue.close();
        assert!(!queue.send(jobs), "a closed queue takes no job");
        let switched: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        // One sleep a job, and one at the start and at the end per thread.
        assert!(
            switched <= jobs + jobs / 4 + 8,
            "{switched} switches for {jobs} jobs"
        );
    }

    #[test]
    fn a_closed_queue_gives_the_jobs_it_holds_then_ends() {
        let queue = Queue::new();
        assert!(queue.send(1) && queue.send(2));
        queue.close();
        assert_eq!(
            (queue.take(), queue.take(), queue.take()),
            (Some(1), Some(2), None)
        );
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
