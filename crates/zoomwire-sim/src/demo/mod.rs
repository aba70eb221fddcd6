//! `zoomwire demo`: the whole engine against the built-in Zoom simulator and
//! a local mail sink, on loopback, with no credentials.
//!
//! It starts the simulator ([`crate::sim`]), the SMTP sink
//! ([`crate::sim::smtp`]) and the daemon exactly as `zoomwire run` does
//! (SQLite journal in a temporary folder, the real OAuth client, WebSocket
//! subscription, scheduler and live effects), pointed at both by ordinary
//! settings. Then it plays the story of [`story`] through the simulator's
//! WebSocket and prints, as they happen, each event, the runs it fired
//! (from [`Executor::subscribe`]) and what the simulator and the sink
//! received because of them. The engine's clock is a [`ManualClock`] that
//! follows the story, so the weekly schedule fires through the real
//! scheduler when the story reaches Monday morning.
//!
//! It runs the rules it is given, with the project's `vars` and sandbox
//! limits, or, when there is no rules folder (a binary installed with `cargo
//! install` run anywhere), the starter rules built into the binary, which
//! the `zoomwire` command writes out for it ([`DemoRules::BuiltIn`]).
//!
//! [`Executor::subscribe`]: zoomwire_engine::engine::executor::Executor::subscribe

pub mod show;
pub mod story;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::broadcast;

use crate::sim::{SimConfig, SimError, SimHandle, SmtpSink, start_smtp_sink};
use show::Tally;
use story::{Action, MissingSeed, Step};
use zoomwire_engine::config::{DEFAULT_ACCOUNT, Settings, Sources};
use zoomwire_engine::daemon::{Daemon, DaemonError, DaemonOptions};
use zoomwire_engine::engine::journal::RunRecord;
use zoomwire_engine::engine::matcher::{Verdict, explain_event};
use zoomwire_engine::event::{Event, Source};
use zoomwire_engine::journal::JournalMode;
use zoomwire_engine::rules::RuleSources;
use zoomwire_engine::scheduler::ManualClock;
use zoomwire_engine::script::{SandboxLimits, vars_value};

/// How long the demo waits for the runs of one event.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the engine may take to connect to the simulator.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// The sender of the engine's emails.
const EMAIL_FROM: &str = "zoomwire demo <zoomwire@example.com>";

/// What to run the demo with.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub rules: DemoRules,
    /// The values scripts and conditions read as `vars`.
    pub vars: serde_json::Map<String, serde_json::Value>,
    pub sandbox: SandboxLimits,
    pub pace: Pace,
}

/// Which rules the demo runs.
#[derive(Debug, Clone)]
pub enum DemoRules {
    /// These rule files and folders, which must exist.
    Given(RuleSources),
    /// The starter rules and scripts built into the `zoomwire` binary, which
    /// it wrote out here for the demo (the header says they are built in).
    BuiltIn(RuleSources),
}

/// Pauses that let a human follow.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// After each event.
    pub between_events: Duration,
    /// After the runs of an event that fired rules.
    pub after_runs: Duration,
}

impl Pace {
    /// About half a minute for the whole story.
    pub fn human() -> Pace {
        Pace {
            between_events: Duration::from_millis(500),
            after_runs: Duration::from_millis(1200),
        }
    }

    /// No pauses (tests).
    pub fn fast() -> Pace {
        Pace {
            between_events: Duration::ZERO,
            after_runs: Duration::ZERO,
        }
    }
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A usage problem: rules missing or invalid (exit 2).
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Sim(#[from] SimError),
    #[error("the mail sink cannot listen on loopback: {0}")]
    Sink(std::io::Error),
    #[error("cannot make a temporary data folder: {0}")]
    DataDir(std::io::Error),
    #[error("the engine did not start: {0}")]
    Daemon(DaemonError),
    #[error("the engine did not connect to the simulator's WebSocket within {0:?}")]
    NotConnected(Duration),
    #[error(transparent)]
    Story(#[from] MissingSeed),
}

/// How the demo went.
#[derive(Debug)]
pub struct DemoOutcome {
    pub tally: Tally,
    pub slack_posts: usize,
    pub rest_calls: usize,
    pub emails: usize,
}

impl DemoOutcome {
    /// Every expected run finished and succeeded.
    pub fn succeeded(&self) -> bool {
        self.tally.all_succeeded()
    }
}

/// Runs the demo to its end, printing as it goes.
pub async fn run_demo(options: DemoOptions) -> Result<DemoOutcome, DemoError> {
    if let DemoRules::Given(sources) = &options.rules {
        check_sources(sources)?;
    }
    let sim = crate::sim::start(SimConfig {
        participants_per_meeting: story::PARTICIPANTS_PER_MEETING,
        ..SimConfig::default()
    })
    .await?;
    let sink = start_smtp_sink(loopback()).await.map_err(DemoError::Sink)?;
    let steps = story::account_week(&sim)?;
    let data = tempfile::Builder::new()
        .prefix("zoomwire-demo-")
        .tempdir()
        .map_err(DemoError::DataDir)?;
    let sources = match &options.rules {
        DemoRules::Given(sources) | DemoRules::BuiltIn(sources) => sources.clone(),
    };
    let settings = Settings {
        vars: options.vars.clone(),
        sandbox: options.sandbox.clone(),
        ..demo_settings(&sim, &sink, data.path())?
    };
    let store = settings.data_dir.join(zoomwire_engine::journal::DB_FILE);
    let story_start = steps.first().map_or_else(Utc::now, |s| s.at) - chrono::Duration::minutes(5);
    let clock = Arc::new(ManualClock::new(story_start));
    let daemon = start_daemon(settings, sources, clock.clone()).await?;
    let runs = daemon.executor.subscribe();
    if !sim
        .wait_for_connections(sim.subscription_id(), 1, CONNECT_TIMEOUT)
        .await
    {
        daemon.stop().await;
        return Err(DemoError::NotConnected(CONNECT_TIMEOUT));
    }
    print_header(&sim, &sink, &daemon, &store, &options);
    let mut player = Player::new(&sim, &sink, &daemon, clock, runs, &options);
    for step in &steps {
        player.play(step).await;
    }
    let outcome = player.finish();
    daemon.stop().await;
    sink.shutdown();
    let _ = sim.shutdown().await;
    drop(data);
    Ok(outcome)
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Every rule path must exist; a scripts folder is optional, as for `zoomwire run`.
fn check_sources(sources: &RuleSources) -> Result<(), DemoError> {
    match sources.paths.iter().find(|path| !path.exists()) {
        None => Ok(()),
        Some(path) => Err(DemoError::Usage(format!(
            "the rules folder {} does not exist: point --rules at one, or leave --rules out (where there is no rules folder the demo runs the starter rules built into zoomwire)",
            path.display()
        ))),
    }
}

/// Ordinary settings pointing the engine at the simulator and the sink.
fn demo_settings(sim: &SimHandle, sink: &SmtpSink, data_dir: &Path) -> Result<Settings, DemoError> {
    let mut env: BTreeMap<String, String> = sim
        .env_lines()
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    let path = |p: &Path| p.display().to_string();
    for (name, value) in [
        ("SMTP_URL", sink.url()),
        ("EMAIL_FROM", EMAIL_FROM.to_string()),
        ("ZOOMWIRE_DATA", path(data_dir)),
        ("ZOOMWIRE_ADMIN_ADDR", loopback().to_string()),
    ] {
        env.insert(name.to_string(), value);
    }
    let sources = Sources {
        env,
        ..Sources::default()
    };
    Settings::from_sources(&sources).map_err(|errors| DemoError::Usage(errors.to_string()))
}

async fn start_daemon(
    settings: Settings,
    rules: RuleSources,
    clock: Arc<ManualClock>,
) -> Result<Daemon, DemoError> {
    let options = DaemonOptions {
        journal: JournalMode::Sqlite,
        watch_rules: false,
        rules: Some(rules),
        scheduler: true,
        clock,
        first_token_timeout: Duration::from_secs(10),
    };
    Daemon::start(settings, options)
        .await
        .map_err(|error| match error {
            DaemonError::Rules(_) => DemoError::Usage(error.to_string()),
            other => DemoError::Daemon(other),
        })
}

fn print_header(
    sim: &SimHandle,
    sink: &SmtpSink,
    daemon: &Daemon,
    store: &Path,
    options: &DemoOptions,
) {
    let rule_set = daemon.rules.current();
    let names: Vec<&str> = rule_set.rules().iter().map(|r| &*r.name).collect();
    println!(
        "zoomwire demo: the engine against the built-in Zoom simulator, on 127.0.0.1 only, no credentials"
    );
    println!();
    println!(
        "  simulator  {}  (Zoom OAuth, WebSocket events, REST API; Slack)",
        sim.base_url()
    );
    println!("  mail sink  {}", sink.url());
    let origin = match &options.rules {
        DemoRules::Given(sources) => sources
            .paths
            .iter()
            .map(|path| path.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        DemoRules::BuiltIn(_) => "the starter rules built into zoomwire (no rules folder here; `zoomwire init` writes them out)".into(),
    };
    println!("  rules      {origin}: {}", names.join(", "));
    println!("  store      {}", store.display());
    println!(
        "  engine     subscribed to the simulator's WebSocket; the page on http://{}/ui/",
        daemon.admin_addr
    );
    println!();
    println!("A week of account activity (times in Europe/Berlin):");
}

/// Plays the story and keeps the tally.
struct Player<'a> {
    sim: &'a SimHandle,
    sink: &'a SmtpSink,
    daemon: &'a Daemon,
    clock: Arc<ManualClock>,
    runs: broadcast::Receiver<RunRecord>,
    pace: Pace,
    tally: Tally,
    vars: rhai::Dynamic,
    /// How many requests, Slack posts and emails were already shown.
    seen: (usize, usize, usize),
    /// Whether the last thing printed was an event with its runs.
    last_was_block: bool,
}

impl<'a> Player<'a> {
    fn new(
        sim: &'a SimHandle,
        sink: &'a SmtpSink,
        daemon: &'a Daemon,
        clock: Arc<ManualClock>,
        runs: broadcast::Receiver<RunRecord>,
        options: &DemoOptions,
    ) -> Player<'a> {
        let seen = (sim.requests().len(), sim.slack_posts().len(), 0);
        Player {
            sim,
            sink,
            daemon,
            clock,
            runs,
            pace: options.pace,
            tally: Tally::default(),
            vars: vars_value(&options.vars),
            seen,
            last_was_block: true,
        }
    }

    async fn play(&mut self, step: &Step) {
        match &step.action {
            Action::Event(body) => self.play_event(step, body).await,
            Action::ClockToNextFiring => self.play_schedule(step).await,
        }
    }

    async fn play_event(&mut self, step: &Step, body: &serde_json::Value) {
        self.clock.set(step.at);
        let source = Source::Websocket(DEFAULT_ACCOUNT.to_string());
        let event = match Event::from_value(body, source) {
            Ok(event) => event,
            Err(error) => {
                println!("  (skipped a story event that does not parse: {error})");
                return;
            }
        };
        let verdicts = explain_event(&self.daemon.rules.current(), &event, &self.vars);
        let fired = verdicts
            .iter()
            .filter(|(_, v)| *v == Verdict::Fired)
            .count();
        self.separate(fired > 0);
        let note = unfired_note(&verdicts, fired);
        println!(
            "{}",
            show::event_line(step.at, &event.event_type, &step.caption, &note)
        );
        if self.sim.emit_event(None, body) == 0 {
            println!("    (the simulator had no open connection to send it on)");
            return;
        }
        self.tally.events_sent += 1;
        let id = event.id.clone();
        self.wait_for_runs(fired, |run| run.event_id == id).await;
        self.show_side_effects();
        self.pause(fired).await;
    }

    /// A blank line around the block of an event that fired runs.
    fn separate(&mut self, block: bool) {
        if block || self.last_was_block {
            println!();
        }
        self.last_was_block = block;
    }

    async fn play_schedule(&mut self, step: &Step) {
        self.separate(true);
        println!("{}", step.caption);
        let wake = tokio::time::timeout(Duration::from_secs(5), self.clock.next_wake()).await;
        let Ok(wake) = wake else {
            println!("    (the scheduler is not waiting for any firing)");
            return;
        };
        let rule_set = self.daemon.rules.current();
        let due: Vec<String> = rule_set
            .rules()
            .iter()
            .filter(|rule| rule.enabled)
            .filter_map(|rule| {
                let schedule = rule.schedule()?;
                (schedule.last_at_or_before(wake) == Some(wake)).then(|| {
                    format!(
                        "{} (\"{}\", {})",
                        rule.name, schedule.expression, schedule.timezone
                    )
                })
            })
            .collect();
        println!(
            "{}",
            show::event_line(wake, "schedule", &format!("due: {}", due.join(", ")), "")
        );
        self.clock.set(wake);
        self.tally.schedule_firings += due.len();
        self.wait_for_runs(due.len(), |run| run.event_type == "schedule")
            .await;
        self.show_side_effects();
        self.pause(due.len()).await;
    }

    /// Prints finished runs as they come until `expected` of them match `mine`.
    async fn wait_for_runs(&mut self, expected: usize, mine: impl Fn(&RunRecord) -> bool) {
        let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
        let mut seen = 0;
        while seen < expected {
            match tokio::time::timeout_at(deadline, self.runs.recv()).await {
                Ok(Ok(run)) => {
                    print!("{}", show::run_lines(&run));
                    self.tally.count_run(&run);
                    seen += usize::from(mine(&run));
                }
                Ok(Err(broadcast::error::RecvError::Lagged(missed))) => {
                    println!("    ({missed} runs finished unseen)");
                }
                Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => {
                    let missing = expected - seen;
                    println!(
                        "    ({missing} run{} did not finish within {}s)",
                        if missing == 1 { "" } else { "s" },
                        RUN_TIMEOUT.as_secs()
                    );
                    self.tally.runs_missing += missing;
                    return;
                }
            }
        }
    }

    /// Prints what the simulator and the sink received since last time.
    fn show_side_effects(&mut self) {
        let requests = self.sim.requests();
        let posts = self.sim.slack_posts();
        let mails = self.sink.messages();
        let (r, p, m) = self.seen;
        print!(
            "{}",
            show::simulator_lines(tail(&requests, r), tail(&posts, p))
        );
        print!("{}", show::mail_lines(tail(&mails, m)));
        self.seen = (requests.len(), posts.len(), mails.len());
    }

    async fn pause(&self, runs: usize) {
        let pause = if runs > 0 {
            self.pace.after_runs
        } else {
            self.pace.between_events
        };
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }

    fn finish(self) -> DemoOutcome {
        let requests = self.sim.requests();
        let posts = self.sim.slack_posts();
        let mails = self.sink.messages();
        print!("{}", show::summary(&self.tally, &requests, &posts, &mails));
        DemoOutcome {
            slack_posts: posts.len(),
            rest_calls: requests.iter().filter(|r| show::is_rest(r)).count(),
            emails: mails.len(),
            tally: self.tally,
        }
    }
}

fn tail<T>(items: &[T], from: usize) -> &[T] {
    items.get(from..).unwrap_or_default()
}

/// Says why no rule fired, or which listening rules' conditions were false.
fn unfired_note(verdicts: &[(Arc<zoomwire_engine::rules::Rule>, Verdict)], fired: usize) -> String {
    let skipped: Vec<String> = verdicts
        .iter()
        .filter_map(|(rule, verdict)| match verdict {
            Verdict::ConditionFalse => Some(format!("{}: `when` is false", rule.name)),
            Verdict::ConditionError(error) => {
                Some(format!("{}: condition error {error}", rule.name))
            }
            Verdict::Disabled => Some(format!("{}: disabled", rule.name)),
            Verdict::Fired | Verdict::TypeMismatch => None,
        })
        .collect();
    if !skipped.is_empty() {
        skipped.join("; ")
    } else if fired == 0 {
        "no rule listens".into()
    } else {
        String::new()
    }
}
