//! The daemon behind `zoomwire run` (and `zoomwire demo`): wires the sources
//! (one WebSocket subscription per account, the webhook, cron, and one
//! reconciler per account that finds again through REST what Zoom sent
//! while no connection was up), the journal, the rule set with hot reload,
//! the executor with the real effects (each account's Zoom calls on its own
//! token cache, the one its WebSocket uses), and the admin API, then runs
//! until told to stop.
//!
//! Events from every source go into one bounded channel, so a slow journal
//! or a busy executor slows intake instead of filling memory. Each event is
//! journaled with the records of its runs, in one commit, before its rules
//! run; a journal error (a full disk) pauses that event's intake and retries
//! it, so nothing counts as accepted unless it was written. Many events are
//! journaled at once (taken from the channel in batches), but their runs are
//! admitted in the order the events arrived. On shutdown intake stops first,
//! then runs in flight get the grace period; whatever is still pending
//! resumes on the next start. Runs put
//! back by `zoomwire runs retry` while the daemon runs are found in the store
//! within a second or so and resumed.

mod cluster;
mod sources;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::activity::ObservedJournal;
use crate::admin::{AdminState, RunHistory, serve_admin};
use crate::backoff::{Backoff, Jitter};
use crate::cluster::{ClusterTimings, NodeIdentity, SCHEDULER_LEASE};
use crate::config::Settings;
use crate::effects::Effects;
use crate::effects::accounts::ZoomAccountClient;
use crate::effects::live::LiveEffects;
use crate::effects::state::{MemoryState, StateStore};
use crate::engine::executor::{EarlyAccepted, Executor, PreparedEvent};
use crate::engine::journal::{Journal, JournalError};
use crate::event::Event;
use crate::journal::memory::{MemoryJournal, MemoryLimits};
use crate::journal::postgres::{PostgresJournal, PostgresOptions};
use crate::journal::{JournalMode, SqliteJournal};
use crate::reconcile::KnownEvents;
use crate::reload::{RuleSetHandle, Watching, reload_on_change};
use crate::rules::{RuleSet, RuleSources};
use crate::scheduler::{Clock, SystemClock, run_scheduler};
use crate::script::{SandboxLimits, ScriptPool, vars_value};
use crate::zoom::oauth::OAuthClient;
use crate::zoom::token::{AccessTokens, TokenError};
use crate::zoom::webhook::webhook_router;
use cluster::Cluster;
use sources::account_sources;

/// Events waiting between the sources and the executor. Beyond these the
/// backlog of a burst waits in the socket and at the sender, not in our
/// memory: in a 100,000-event burst on the durable journal 4096 waiting and
/// 1024 in flight held the peak RSS 7-8 MiB higher than 512 and 256, at the
/// same events/s and CPU per event (the writer still commits four intake
/// batches at once while the disk syncs).
const INTAKE_CAPACITY: usize = 512;
/// Events being journaled and matched at once. The durable journal's
/// burst peaks with what is in flight: 128 against 256 (`zoomwire bench`,
/// 100k burst, 7 alternated runs each, release build) held the peak RSS at
/// 42.1-44.9 MiB instead of 47.4-48.8, at 0.97x the events/s (medians,
/// within the run-to-run spread) and p99 1.42 against 1.20 ms at 2,000
/// events/s; two intake batches of up to 64 can still be in flight. (Halving
/// `INTAKE_CAPACITY` as well took nothing more off, and webhooks answer 503
/// once it is full.) The memory journal's peak did not change.
const INTAKE_CONCURRENCY: usize = 128;
/// Most events one intake handler takes (at most `INTAKE_CONCURRENCY`).
const INTAKE_BATCH: usize = 64;
/// Matching time a batch may spend on an async worker (see [`prepare_batch`]).
const MATCH_BUDGET: Duration = Duration::from_millis(1);
/// How often the store is checked for runs put back by `zoomwire runs retry`.
const REQUEUE_POLL: Duration = Duration::from_secs(1);

/// Why the daemon could not start. All are configuration problems (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("the rules did not load:\n{}", .0.join("\n"))]
    Rules(Vec<String>),
    #[error("the store could not be opened: {0}")]
    Journal(String),
    #[error("{0}")]
    Token(String),
    #[error("{0}")]
    Serve(String),
}

/// What to start besides the core.
pub struct DaemonOptions {
    pub journal: JournalMode,
    /// Watch the rule and script folders (and SIGHUP) for hot reload.
    pub watch_rules: bool,
    /// The rule files and folders to load (`zoomwire run --rules`); `None`
    /// means the configured folders.
    pub rules: Option<RuleSources>,
    pub scheduler: bool,
    pub clock: Arc<dyn Clock>,
    /// How long to keep trying for the first OAuth token of each account.
    pub first_token_timeout: Duration,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            journal: JournalMode::Sqlite,
            watch_rules: true,
            rules: None,
            scheduler: true,
            clock: Arc::new(SystemClock),
            first_token_timeout: Duration::from_secs(30),
        }
    }
}

/// A running daemon.
pub struct Daemon {
    pub admin_addr: SocketAddr,
    pub webhook_addr: Option<SocketAddr>,
    pub executor: Executor,
    pub rules: Arc<RuleSetHandle>,
    pub admin: Arc<AdminState>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    grace: Duration,
    /// With the PostgreSQL journal: this node in the cluster.
    cluster: Option<Arc<Cluster>>,
}

impl Daemon {
    /// Starts every part; returns once the admin API listens and every
    /// account has its first token.
    pub async fn start(settings: Settings, options: DaemonOptions) -> Result<Daemon, DaemonError> {
        for setting in settings.register_secrets(crate::secrets::Secrets::global()) {
            tracing::warn!(setting = %setting, min_chars = crate::secrets::MIN_SECRET_CHARS, "this secret is too short to be scrubbed from logs and records by value: use a longer one");
        }
        let limits = settings.sandbox.effective();
        // Many webhook connections must not starve the store, the WebSocket
        // and the admin server of file descriptors.
        let open_files = crate::serve::limits::raise_open_files_limit();
        let sources = options
            .rules
            .clone()
            .unwrap_or_else(|| rule_sources(&settings));
        // Watched before the rules load, so that a change made meanwhile is seen.
        let watching = options
            .watch_rules
            .then(|| Watching::start(&sources, crate::reload::DEFAULT_DEBOUNCE));
        let rules = load_rules(sources, &limits)?;
        let stores = open_journal(&settings, options.journal).await?;
        let admin = AdminState::new();
        // The page follows what the journal records.
        let journal: Arc<dyn Journal> = Arc::new(ObservedJournal::new(
            stores.journal,
            admin.activity().clone(),
        ));
        let state = stores.state;
        let tokens = first_tokens(&settings, options.first_token_timeout).await?;
        let effects = live_effects(&settings, &tokens, state.clone())?;
        let pool = Arc::new(ScriptPool::new(limits.pool_threads, limits.stack_size));
        let vars = vars_value(&settings.vars);
        let executor =
            Executor::new(journal.clone(), effects, pool, vars).with_current_rules(rules.clone());
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        admin.rules_loaded(rules.current().rules().len());
        admin.show_rules(rules.clone());
        let (admin_addr, _) = serve_admin(
            settings.admin_options(),
            admin.clone(),
            stores.history,
            shutdown.clone(),
        )
        .await
        .map_err(|e| DaemonError::Serve(e.to_string()))?;
        let cluster = stores.cluster.map(Arc::new);
        if let Some(cluster) = &cluster {
            cluster
                .join(admin_addr.to_string(), &tasks, &shutdown)
                .await?;
            admin.show_cluster(cluster.health.clone());
        }
        let (events_tx, events_rx) = mpsc::channel(INTAKE_CAPACITY);
        let webhook_addr =
            start_webhook(&settings, events_tx.clone(), open_files, &shutdown).await?;
        let wiring = ReconcileWiring {
            rules: rules.clone(),
            known: stores.known,
            state: state.clone(),
            events: events_tx.clone(),
        };
        for sources in account_sources(&settings, &tokens, &wiring, &admin) {
            if sources.is_empty() {
                continue;
            }
            match &cluster {
                Some(cluster) => cluster.run_account(sources, &tasks, &shutdown),
                None => {
                    tasks.spawn(sources.run(shutdown.clone()));
                }
            }
        }
        drop(wiring);
        drop(events_tx);
        resume_unfinished(&executor, &rules, &journal).await;
        if options.journal != JournalMode::Memory {
            // Runs put back by `zoomwire runs retry`, and (PostgreSQL) those
            // of nodes gone silent.
            tasks.spawn(resume_requeued(
                executor.clone(),
                rules.clone(),
                journal.clone(),
                shutdown.clone(),
            ));
        }
        tasks.spawn(intake(
            events_rx,
            Intake::new(
                executor.clone(),
                rules.clone(),
                admin.clone(),
                settings.max_waiting_runs,
            ),
            shutdown.clone(),
        ));
        if let Some(watching) = watching {
            tasks.spawn(reload_on_change(rules.clone(), watching, shutdown.clone()));
        }
        tasks.spawn(mirror_rule_status(
            rules.clone(),
            admin.clone(),
            shutdown.clone(),
        ));
        if options.scheduler {
            let (rules, executor, clock) = (rules.clone(), executor.clone(), options.clock.clone());
            let scheduler = move |token| {
                run_scheduler(
                    rules.clone(),
                    executor.clone(),
                    clock.clone(),
                    state.clone(),
                    token,
                )
            };
            match &cluster {
                Some(cluster) => {
                    cluster.under_lease(SCHEDULER_LEASE, &tasks, &shutdown, move |token, _| {
                        scheduler(token)
                    })
                }
                None => {
                    tasks.spawn(scheduler(shutdown.clone()));
                }
            }
        }
        if let (Some(cluster), Some(interval)) =
            (&cluster, settings.journal_options().prune_interval)
        {
            cluster.run_pruner(interval, &tasks, &shutdown);
        }
        let node = cluster.as_ref().map(|c| c.node().id.clone());
        tracing::info!(admin = %admin_addr, rules = rules.current().rules().len(), accounts = settings.accounts.len(), node, "zoomwire is running");
        Ok(Daemon {
            admin_addr,
            webhook_addr,
            executor,
            rules,
            admin,
            shutdown,
            tasks,
            grace: settings.shutdown_grace,
            cluster,
        })
    }

    /// A token that stops the daemon when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops intake, lets runs in flight finish within the grace period, and
    /// returns whether they all did.
    pub async fn stop(self) -> bool {
        self.shutdown.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
        let finished = self.executor.shutdown(self.grace).await;
        if let Some(cluster) = &self.cluster {
            cluster.leave().await;
        }
        if finished {
            tracing::info!("stopped: every run finished");
        } else {
            tracing::warn!(
                grace_ms = self.grace.as_millis() as u64,
                "stopped with runs still in flight: they stay pending and resume on the next start"
            );
        }
        finished
    }

    /// Runs until Ctrl-C or SIGTERM, then stops.
    pub async fn run_until_signal(self) -> bool {
        wait_for_signal(&self.shutdown).await;
        tracing::info!("stopping: intake closed, waiting for runs in flight");
        self.stop().await
    }
}

fn rule_sources(settings: &Settings) -> RuleSources {
    RuleSources {
        paths: vec![settings.rules_dir.clone()],
        scripts_dir: settings.scripts_dir.clone(),
    }
}

fn load_rules(
    sources: RuleSources,
    limits: &SandboxLimits,
) -> Result<Arc<RuleSetHandle>, DaemonError> {
    RuleSetHandle::load(sources, limits.clone())
        .map(Arc::new)
        .map_err(|errors| DaemonError::Rules(errors.iter().map(ToString::to_string).collect()))
}

/// The journal behind each seam, and the cluster when there is one.
struct Stores {
    journal: Arc<dyn Journal>,
    history: Arc<dyn RunHistory>,
    state: Arc<dyn StateStore>,
    known: Arc<dyn KnownEvents>,
    /// With PostgreSQL: this node among the others.
    cluster: Option<Cluster>,
}

async fn open_journal(settings: &Settings, mode: JournalMode) -> Result<Stores, DaemonError> {
    match mode {
        JournalMode::Sqlite => {
            let journal = SqliteJournal::open(&settings.data_dir, settings.journal_options())
                .map_err(|e| DaemonError::Journal(e.to_string()))?;
            Ok(Stores {
                journal: Arc::new(journal.clone()),
                history: Arc::new(journal.clone()),
                state: Arc::new(journal.clone()),
                known: Arc::new(journal),
                cluster: None,
            })
        }
        JournalMode::Postgres => {
            let target = settings.journal.database.as_ref().ok_or_else(|| {
                DaemonError::Config(
                    "ZOOMWIRE_DATABASE_URL is needed with the postgres journal".into(),
                )
            })?;
            let node = NodeIdentity::new(&settings.node_id());
            let timings = ClusterTimings::from_ttl(settings.journal.lease_ttl);
            let options = PostgresOptions {
                node: node.id.clone(),
                node_timeout: timings.lease_ttl,
                seal_dir: Some(settings.data_dir.clone()),
                limits: settings.journal_options(),
                ..PostgresOptions::default()
            };
            let journal = PostgresJournal::open(target, options)
                .await
                .map_err(|e| DaemonError::Journal(e.to_string()))?;
            tracing::info!(server = %journal.server(), node = %node.id, "postgres journal open");
            Ok(Stores {
                journal: Arc::new(journal.clone()),
                history: Arc::new(journal.clone()),
                state: Arc::new(journal.clone()),
                known: Arc::new(journal.clone()),
                cluster: Some(Cluster::new(journal, node, timings)),
            })
        }
        JournalMode::Memory => {
            let journal = Arc::new(MemoryJournal::new(MemoryLimits::default()));
            Ok(Stores {
                journal: journal.clone(),
                history: journal.clone(),
                state: Arc::new(MemoryState::with_max_keys(settings.effects.state_max_keys)),
                known: journal,
                cluster: None,
            })
        }
    }
}

/// One token cache per account, each with its first token in hand.
async fn first_tokens(
    settings: &Settings,
    timeout: Duration,
) -> Result<Vec<(String, Arc<dyn AccessTokens>)>, DaemonError> {
    let mut tokens = Vec::new();
    for account in &settings.accounts {
        let client = OAuthClient::new(settings.oauth_config(account))
            .map_err(|e| DaemonError::Token(e.to_string()))?;
        let client: Arc<dyn AccessTokens> = Arc::new(client);
        first_token(&account.name, &client, timeout).await?;
        tokens.push((account.name.clone(), client));
    }
    Ok(tokens)
}

/// Waits for a first token with backoff; refused credentials end at once.
async fn first_token(
    account: &str,
    tokens: &Arc<dyn AccessTokens>,
    timeout: Duration,
) -> Result<(), DaemonError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let backoff = Backoff {
        first: Duration::from_millis(250),
        max: Duration::from_secs(5),
        jitter: Jitter::None,
    };
    let mut retry = 0;
    loop {
        let delay = backoff.delay(retry);
        match tokens.token().await {
            Ok(_) => return Ok(()),
            Err(error @ TokenError::Refused { .. }) => {
                return Err(DaemonError::Token(format!("account `{account}`: {error}")));
            }
            Err(error) if tokio::time::Instant::now() + delay > deadline => {
                return Err(DaemonError::Token(format!(
                    "account `{account}`: no oauth token after {}s: {error}",
                    timeout.as_secs()
                )));
            }
            Err(error) => {
                tracing::warn!(account, error = %error, retry_ms = delay.as_millis() as u64, "no oauth token yet");
                tokio::time::sleep(delay).await;
                retry += 1;
            }
        }
    }
}

/// The real effects; each account's Zoom calls use its own token cache
/// (the one its WebSocket uses) and limits.
fn live_effects(
    settings: &Settings,
    tokens: &[(String, Arc<dyn AccessTokens>)],
    state: Arc<dyn StateStore>,
) -> Result<Arc<dyn Effects>, DaemonError> {
    let accounts = settings
        .accounts
        .iter()
        .filter_map(|account| {
            let (_, tokens) = tokens.iter().find(|(name, _)| *name == account.name)?;
            Some(ZoomAccountClient {
                name: account.name.clone(),
                account_id: account.account_id.clone(),
                tokens: tokens.clone(),
            })
        })
        .collect();
    let effects = LiveEffects::new(settings.live_config(), accounts, state)
        .map_err(|e| DaemonError::Config(e.to_string()))?;
    Ok(Arc::new(effects))
}

/// The webhook endpoint behind its limits (see `crate::serve::public`).
async fn start_webhook(
    settings: &Settings,
    events: mpsc::Sender<Event>,
    open_files: Option<u64>,
    shutdown: &CancellationToken,
) -> Result<Option<SocketAddr>, DaemonError> {
    let Some(secret) = settings.webhook.secret_token.clone() else {
        return Ok(None);
    };
    let limits = &settings.webhook.limits;
    let router = webhook_router(secret, events, limits.max_body);
    let (addr, _) = crate::serve::public::serve_public(
        "webhook",
        settings.webhook.addr,
        router,
        limits,
        open_files,
        shutdown.clone(),
    )
    .await
    .map_err(|e| DaemonError::Serve(e.to_string()))?;
    tracing::info!(addr = %addr, "webhook endpoint listening on /zoom/webhook");
    Ok(Some(addr))
}

/// What every account's reconciler shares.
struct ReconcileWiring {
    rules: Arc<RuleSetHandle>,
    known: Arc<dyn KnownEvents>,
    state: Arc<dyn StateStore>,
    events: mpsc::Sender<Event>,
}

/// Resumes runs a crash left pending or running.
async fn resume_unfinished(
    executor: &Executor,
    rules: &Arc<RuleSetHandle>,
    journal: &Arc<dyn Journal>,
) {
    let unfinished = match journal.unfinished_runs().await {
        Ok(unfinished) => unfinished,
        Err(error) => {
            tracing::error!(error = %error, "cannot read unfinished runs");
            return;
        }
    };
    if !unfinished.is_empty() {
        tracing::info!(runs = unfinished.len(), "resuming runs left unfinished");
        metrics::counter!("zoomwire_runs_resumed_total").increment(unfinished.len() as u64);
    }
    let rule_set = rules.current();
    for run in unfinished {
        let id = run.run.id.clone();
        if let Err(error) = executor.resume(&rule_set, run).await {
            tracing::error!(run = %id, error = %error, "cannot resume run");
        }
    }
}

/// Starts the runs `zoomwire runs retry` puts back while the daemon runs:
/// unfinished in the store, unknown to the executor.
async fn resume_requeued(
    executor: Executor,
    rules: Arc<RuleSetHandle>,
    journal: Arc<dyn Journal>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(REQUEUE_POLL) => {}
        }
        if let Err(error) = resume_requeued_once(&executor, &rules, &journal).await {
            tracing::warn!(error = %error, "cannot look for requeued runs");
        }
    }
}

async fn resume_requeued_once(
    executor: &Executor,
    rules: &RuleSetHandle,
    journal: &Arc<dyn Journal>,
) -> Result<(), crate::engine::journal::JournalError> {
    let candidates: Vec<String> = journal
        .unfinished_run_ids()
        .await?
        .into_iter()
        .filter(|id| !executor.is_active(id))
        .collect();
    if candidates.is_empty() {
        return Ok(());
    }
    // A run the executor let go of after the first read had its final
    // record written before: read the candidates again (only them: in a
    // burst thousands of runs are pending) so that it does not run twice.
    for run in journal.unfinished_runs_among(&candidates).await? {
        let id = run.run.id.clone();
        if executor.is_active(&id) {
            continue;
        }
        tracing::info!(run = %id, rule = %run.run.rule, "resuming a requeued run");
        metrics::counter!("zoomwire_runs_resumed_total").increment(1);
        if let Err(error) = executor.resume(&rules.current(), run).await {
            tracing::error!(run = %id, error = %error, "cannot resume run");
        }
    }
    Ok(())
}

/// Journals, matches and starts runs for every event, many at once. When
/// stopping it takes no new events but still journals those already
/// received (the webhook answered 200 for them, so Zoom will not send them
/// again); their runs resume on the next start if the grace runs out.
///
/// Events are taken in batches of what has queued up (at most
/// [`INTAKE_BATCH`]) and matched here; then one task per batch instead of
/// one per event, so a busy stream pays the hand-offs once per batch while a
/// quiet one still handles each event as it comes. A batch that starts no
/// run needs no task: the journal settles it on its own thread when it can
/// ([`Intake::accept_alone`]). Before each batch it waits while
/// `max_waiting_runs` runs wait their turn: the channel then fills, the
/// WebSocket is no longer read and webhooks answer 503, and nothing is
/// dropped. (The bound can be passed by the runs of the events already
/// being journaled, at most [`INTAKE_CONCURRENCY`] events' worth.)
async fn intake(
    mut events: mpsc::Receiver<Event>,
    mut intake: Intake,
    shutdown: CancellationToken,
) {
    loop {
        let mut batch = Vec::with_capacity(INTAKE_BATCH);
        let taken = tokio::select! {
            _ = shutdown.cancelled() => break,
            taken = async {
                intake.executor.wait_for_room(intake.max_waiting_runs).await;
                events.recv_many(&mut batch, INTAKE_BATCH).await
            } => taken,
        };
        if taken == 0 {
            break;
        }
        intake.dispatch(batch).await;
    }
    events.close();
    loop {
        let mut batch = Vec::with_capacity(INTAKE_BATCH);
        if events.recv_many(&mut batch, INTAKE_BATCH).await == 0 {
            break;
        }
        intake.dispatch(batch).await;
    }
    intake.handlers.close();
    intake.handlers.wait().await;
}

/// The intake's handlers and the order they admit runs in.
struct Intake {
    in_flight: Arc<Semaphore>,
    handlers: TaskTracker,
    /// Resolves when the previous batch's runs have been admitted.
    previous: Option<oneshot::Receiver<()>>,
    executor: Executor,
    rules: Arc<RuleSetHandle>,
    admin: Arc<AdminState>,
    /// Runs waiting their turn at which intake stops taking events.
    max_waiting_runs: usize,
}

impl Intake {
    fn new(
        executor: Executor,
        rules: Arc<RuleSetHandle>,
        admin: Arc<AdminState>,
        max_waiting_runs: usize,
    ) -> Intake {
        Intake {
            in_flight: Arc::new(Semaphore::new(INTAKE_CONCURRENCY)),
            handlers: TaskTracker::new(),
            previous: None,
            executor,
            rules,
            admin,
            max_waiting_runs,
        }
    }

    /// Matches a batch of events and hands it to a handler (or, when none of
    /// them starts a run, to the journal alone), waiting while too many
    /// events are being journaled.
    async fn dispatch(&mut self, batch: Vec<Event>) {
        // A batch never holds more than the semaphore has (`INTAKE_BATCH`
        // <= `INTAKE_CONCURRENCY`) and it is never closed: acquiring only waits.
        let Ok(permit) = self
            .in_flight
            .clone()
            .acquire_many_owned(batch.len() as u32)
            .await
        else {
            return;
        };
        for event in &batch {
            if let crate::event::Source::Websocket(name) = &event.source {
                self.admin.note_event(name, event.received_at);
            }
        }
        let prepared = prepare_batch(&self.executor, &self.rules.current(), batch);
        if self.executor.journal().answers_detached()
            && prepared.iter().all(PreparedEvent::is_alone)
        {
            return self.accept_alone(prepared, permit).await;
        }
        let executor = self.executor.clone();
        let rules = self.rules.clone();
        let (admitted, next_turn) = oneshot::channel::<()>();
        let turn = self.previous.replace(next_turn);
        self.handlers.spawn(async move {
            accept_batch(&executor, &rules, prepared, turn, admitted).await;
            drop(permit);
        });
    }

    /// Journals a batch of events that start no run without a task waiting
    /// for the commit: the journal's thread settles them once written (most
    /// events start no run, and the wake-up would cost more than the rest of
    /// their handling). There are no runs to admit, so the order of admission
    /// is not theirs to keep. An event not written is journaled again as
    /// after any failed write ([`accept`]), on a task then.
    async fn accept_alone(&self, prepared: Vec<PreparedEvent>, permit: OwnedSemaphorePermit) {
        let (executor, rules) = (self.executor.clone(), self.rules.clone());
        let (runtime, tracked) = (tokio::runtime::Handle::current(), self.handlers.token());
        let events: Vec<Event> = prepared.iter().map(|p| p.event().clone()).collect();
        let done = Box::new(move |written: Vec<Result<bool, JournalError>>| {
            let written = executor.settle(&prepared, written);
            let mut failed = Vec::new();
            for (prepared, written) in prepared.into_iter().zip(written) {
                match written {
                    Ok(_) => prepared.event().mark_journaled(),
                    Err(error) => failed.push((prepared.into_event(), error)),
                }
            }
            if failed.is_empty() {
                return;
            }
            // The permit stays taken while the store refuses: intake pauses.
            runtime.spawn(async move {
                for (event, error) in failed {
                    let (prepared, fresh) = accept(&executor, &rules, event, error).await;
                    if fresh {
                        let runs = executor.admit_untracked(prepared);
                        executor.record_turned_away(runs).await;
                    }
                }
                drop((permit, tracked));
            });
        });
        let events: Vec<&Event> = events.iter().collect();
        self.executor
            .journal()
            .accept_events_detached(&events, done)
            .await;
    }
}

/// Journals a batch of events with their runs (all at once, so they share
/// the journal's commits), then, once the previous batch's runs are admitted
/// (`turn`), admits its own in arrival order and lets the next batch's go
/// (`admitted`). Admission keeps the order of arrival, so queued runs of one
/// key start in that order.
///
/// When the journal says every event is fresh once their statements ran,
/// before the commit ([`Executor::accept_all_early`]), the runs are admitted
/// then, and their effects wait for the commit ([`admit_before_commit`]);
/// otherwise (a duplicate or an error in the batch) after the commit, as
/// each answer says.
async fn accept_batch(
    executor: &Executor,
    rules: &RuleSetHandle,
    mut prepared: Vec<PreparedEvent>,
    turn: Option<oneshot::Receiver<()>>,
    admitted: oneshot::Sender<()>,
) {
    let early = executor.accept_all_early(&mut prepared).await;
    if early.all_fresh_early() {
        return admit_before_commit(executor, rules, prepared, early, turn, admitted).await;
    }
    let written = early.committed().await;
    let written = executor.settle(&prepared, written);
    let accepted = journal_batch(executor, rules, prepared, written).await;
    if let Some(turn) = turn {
        // An error means the previous handler ended without admitting: its turn is over too.
        let _ = turn.await;
    }
    let runs: Vec<_> = accepted
        .into_iter()
        .filter_map(|(prepared, fresh)| fresh.then(|| executor.admit_untracked(prepared)))
        .collect();
    drop(admitted);
    for runs in runs {
        executor.record_turned_away(runs).await;
    }
}

/// [`accept_batch`] for a batch whose events are all fresh before their
/// commit: admits their runs in turn, then waits for the commit. An event
/// whose commit failed has had its runs stopped before any effect; it is
/// journaled again as after a failed write ([`accept`]), and its new runs
/// admitted then, after those of later batches.
async fn admit_before_commit(
    executor: &Executor,
    rules: &RuleSetHandle,
    prepared: Vec<PreparedEvent>,
    early: EarlyAccepted,
    turn: Option<oneshot::Receiver<()>>,
    admitted: oneshot::Sender<()>,
) {
    let events: Vec<Event> = prepared.iter().map(|p| p.event().clone()).collect();
    if let Some(turn) = turn {
        // An error means the previous handler ended without admitting: its turn is over too.
        let _ = turn.await;
    }
    let mut runs: Vec<_> = prepared
        .into_iter()
        .map(|prepared| executor.admit_untracked(prepared))
        .collect();
    drop(admitted);
    for (event, written) in events.into_iter().zip(early.committed().await) {
        match written {
            // A duplicate after all (its runs were stopped) is journaled too.
            Ok(_) => event.mark_journaled(),
            Err(error) => {
                let (prepared, fresh) = accept(executor, rules, event, error).await;
                if fresh {
                    runs.push(executor.admit_untracked(prepared));
                }
            }
        }
    }
    for runs in runs {
        executor.record_turned_away(runs).await;
    }
}

/// Matches a batch's events. Conditions are pure but not free: Rhai may
/// take up to a condition's timeout. Once a batch has spent
/// [`MATCH_BUDGET`] matching, the rest is matched with this worker marked
/// as blocking, so that the WebSocket, webhooks and admin API keep theirs.
fn prepare_batch(
    executor: &Executor,
    rule_set: &Arc<RuleSet>,
    batch: Vec<Event>,
) -> Vec<PreparedEvent> {
    let started = std::time::Instant::now();
    let mut events = batch.into_iter();
    let mut prepared = Vec::with_capacity(events.len());
    for event in events.by_ref() {
        prepared.push(executor.prepare(rule_set, event));
        if started.elapsed() > MATCH_BUDGET {
            break;
        }
    }
    if events.len() > 0 {
        let rest = || {
            events
                .map(|event| executor.prepare(rule_set, event))
                .collect()
        };
        let rest: Vec<PreparedEvent> = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(rest),
            _ => rest(),
        };
        prepared.extend(rest);
    }
    prepared
}

/// A batch's matched events with the journal's answers (`written`, one
/// writer request for the batch); each event is written all or nothing on
/// its own, and those that could not be are retried one by one
/// ([`accept`]). In order; `fresh` is false for a duplicate.
async fn journal_batch(
    executor: &Executor,
    rules: &RuleSetHandle,
    prepared: Vec<PreparedEvent>,
    written: Vec<Result<bool, JournalError>>,
) -> Vec<(PreparedEvent, bool)> {
    let mut accepted = Vec::with_capacity(prepared.len());
    let mut failed = Vec::new();
    for (index, (prepared, written)) in prepared.into_iter().zip(written).enumerate() {
        match written {
            Ok(fresh) => {
                prepared.event().mark_journaled();
                accepted.push(Some((prepared, fresh)));
            }
            Err(error) => {
                accepted.push(None);
                failed.push((index, prepared, error));
            }
        }
    }
    if !failed.is_empty() {
        let retried = futures_util::future::join_all(failed.into_iter().map(
            |(index, prepared, error)| async move {
                (
                    index,
                    accept(executor, rules, prepared.into_event(), error).await,
                )
            },
        ))
        .await;
        for (index, done) in retried {
            accepted[index] = Some(done);
        }
    }
    accepted.into_iter().flatten().collect()
}

/// Journals one matched event with its runs after its first write failed
/// with `error`, retrying (matched again with the rules of the moment)
/// while the journal cannot write it. `fresh` is false for a duplicate.
async fn accept(
    executor: &Executor,
    rules: &RuleSetHandle,
    event: Event,
    mut error: JournalError,
) -> (PreparedEvent, bool) {
    let mut delay = Duration::from_millis(100);
    loop {
        let event = event.clone();
        metrics::counter!("zoomwire_intake_paused_total").increment(1);
        tracing::error!(event = %event.id, error = %error, retry_ms = delay.as_millis() as u64, "cannot journal event: intake paused");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
        let prepared = executor.prepare(&rules.current(), event);
        match executor.accept(&prepared).await {
            Ok(fresh) => {
                prepared.event().mark_journaled();
                return (prepared, fresh);
            }
            Err(again) => error = again,
        }
    }
}

/// Copies the reload status into the health report.
async fn mirror_rule_status(
    rules: Arc<RuleSetHandle>,
    admin: Arc<AdminState>,
    shutdown: CancellationToken,
) {
    let mut last = None;
    loop {
        let status = rules.status();
        if last.as_ref() != Some(&status) {
            if status.ok {
                admin.rules_loaded(status.rules);
            } else {
                admin.rules_reload_failed(status.errors.clone());
            }
            last = Some(status);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Ctrl-C, SIGTERM, or the token.
async fn wait_for_signal(shutdown: &CancellationToken) {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let sigterm = async {
        match terminate.as_mut() {
            Some(stream) => {
                stream.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm => {}
        _ = shutdown.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effects::recorder::RecordingEffects;
    use crate::journal::JournalOptions;

    /// The rules of `rules_yaml`, and an executor on `journal`.
    fn rules_and_executor(
        dir: &std::path::Path,
        rules_yaml: &str,
        journal: Arc<dyn Journal>,
    ) -> (Arc<RuleSetHandle>, Executor) {
        std::fs::write(dir.join("r.yaml"), rules_yaml).unwrap();
        let sources = RuleSources {
            paths: vec![dir.to_path_buf()],
            scripts_dir: dir.join("scripts"),
        };
        let rules = Arc::new(RuleSetHandle::load(sources, SandboxLimits::default()).unwrap());
        let executor = Executor::new(
            journal,
            Arc::new(RecordingEffects::default()),
            Arc::new(ScriptPool::new(1, 16 * 1024 * 1024)),
            rhai::Dynamic::from_map(rhai::Map::new()),
        );
        (rules, executor)
    }

    /// An event of type `c.d`, which the tests' rule (on `a.b`) does not match.
    fn alone(n: i64, pad: &str) -> Event {
        let body = serde_json::json!({"event": "c.d", "event_ts": n, "pad": pad});
        Event::from_value(&body, crate::event::Source::Webhook).unwrap()
    }

    /// Events that start no run are written with nobody waiting for their
    /// commit; stopping still waits for those writes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_without_runs_are_journaled_before_intake_ends() {
        let dir = tempfile::tempdir().unwrap();
        let options = JournalOptions {
            prune_interval: None,
            ..JournalOptions::default()
        };
        let journal = Arc::new(SqliteJournal::open(&dir.path().join("data"), options).unwrap());
        assert!(journal.answers_detached());
        let rules_yaml = "name: r\non: a.b\ndo: \"1\"\n";
        let (rules, executor) = rules_and_executor(dir.path(), rules_yaml, journal.clone());
        let (sender, receiver) = mpsc::channel(16);
        let mut receipts = Vec::new();
        for n in 0..8 {
            let (event, journaled) = alone(n, "").with_receipt();
            receipts.push(journaled);
            sender.send(event).await.unwrap();
        }
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let intake_state = Intake::new(executor.clone(), rules, AdminState::new(), 100);
        intake(receiver, intake_state, shutdown).await;
        assert_eq!(
            journal.counts().unwrap().events,
            8,
            "all written when intake ended"
        );
        for mut journaled in receipts {
            assert!(journaled.try_recv().is_ok(), "each source told");
        }
    }

    /// An event that starts no run and could not be written (a full store)
    /// is written again once there is room, and only then told journaled.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_event_without_runs_is_written_again_after_a_failed_write() {
        let dir = tempfile::tempdir().unwrap();
        let options = JournalOptions {
            max_size_bytes: Some(512 * 1024),
            max_age: Duration::ZERO,
            prune_interval: None,
            ..JournalOptions::default()
        };
        let journal = Arc::new(SqliteJournal::open(&dir.path().join("data"), options).unwrap());
        let pad = "x".repeat(16 * 1024);
        let mut filled = 0;
        while journal.accept_event(&alone(filled, &pad)).await.is_ok() {
            filled += 1;
            assert!(filled < 10_000, "the store never filled up");
        }
        let rules_yaml = "name: r\non: a.b\ndo: \"1\"\n";
        let (rules, executor) = rules_and_executor(dir.path(), rules_yaml, journal.clone());
        let (sender, receiver) = mpsc::channel(16);
        let (event, mut journaled) = alone(-1, &pad).with_receipt();
        let id = event.id.clone();
        sender.send(event).await.unwrap();
        let shutdown = CancellationToken::new();
        let intake_state = Intake::new(executor.clone(), rules, AdminState::new(), 100);
        let intake = tokio::spawn(intake(receiver, intake_state, shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            journaled.try_recv().is_err(),
            "not told while the store is full"
        );
        assert!(journal.get_event(&id).unwrap().is_none());
        let pruner = journal.clone();
        let pruned = tokio::task::spawn_blocking(move || pruner.prune()).await;
        pruned.unwrap().unwrap();
        tokio::time::timeout(Duration::from_secs(10), journaled)
            .await
            .expect("written once the store has room")
            .unwrap();
        assert!(journal.get_event(&id).unwrap().is_some());
        shutdown.cancel();
        drop(sender);
        intake.await.unwrap();
    }

    #[tokio::test]
    async fn events_already_received_are_journaled_when_stopping() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("r.yaml"), "name: r\non: a.b\ndo: \"1\"\n").unwrap();
        let sources = RuleSources {
            paths: vec![dir.path().to_path_buf()],
            scripts_dir: dir.path().join("scripts"),
        };
        let rules = Arc::new(RuleSetHandle::load(sources, SandboxLimits::default()).unwrap());
        let journal = Arc::new(MemoryJournal::default());
        let executor = Executor::new(
            journal.clone(),
            Arc::new(RecordingEffects::default()),
            Arc::new(ScriptPool::new(1, 16 * 1024 * 1024)),
            rhai::Dynamic::from_map(rhai::Map::new()),
        );
        let (sender, receiver) = mpsc::channel(16);
        for n in 0..8 {
            let body = serde_json::json!({"event": "a.b", "event_ts": n});
            let event = Event::from_value(&body, crate::event::Source::Webhook).unwrap();
            sender.send(event).await.unwrap();
        }
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        intake(
            receiver,
            Intake::new(executor.clone(), rules, AdminState::new(), 100),
            shutdown,
        )
        .await;
        assert_eq!(
            journal.runs().len(),
            8,
            "every received event was journaled"
        );
        assert!(sender.is_closed(), "and no more are taken");
        executor.wait_idle().await;
    }
}
