//! `zoomwire bench`: drives a real daemon from the simulator's WebSocket and
//! measures what a user gets, for each journal asked for (by default the
//! durable default, SQLite with `synchronous=FULL`, and the memory journal).
//!
//! This process hosts the simulator; the daemon is `zoomwire run` (this
//! same executable) in a separate process pointed at it, with the 20 rules
//! of [`workload`] (default settings, conditions as users write them) in a
//! scratch folder, so its CPU time and memory are its own. For each journal:
//!
//! - throughput: N events of the mix, bursts included, sent as fast as the
//!   WebSocket takes them, from the first frame sent until the daemon counted
//!   all of them (`zoomwire_events_total` on `/metrics`) and the simulator
//!   received every Slack post they cause; with the daemon's CPU time per
//!   event (`/proc/<pid>/stat`);
//! - latency: events at a fixed rate, each carrying its send time, which the
//!   posting rules copy into the message; the simulator stamps each post
//!   when it arrives, so latency is frame sent to Slack post received;
//! - memory: the daemon's RSS when idle and its peak (`VmHWM`) per phase;
//! - delivery: every expected post exactly once ([`ledger`]); a missing or
//!   doubled post fails the bench (exit 1) instead of giving figures.
//!
//! The disk's `fdatasync` latency is measured in the same run, in the same
//! folder, for as long as the latency phase, as the floor under the durable
//! journal's latency; the journal's own commits in that phase say whether it
//! met one of the disk's stalls ([`disk`]).
//!
//! With PostgreSQL and `--nodes N`, N daemons share the database (a scratch
//! server of the bench's own, [`scratch_pg`], unless `ZOOMWIRE_DATABASE_URL`
//! is given): the WebSocket reaches the node holding the subscription's
//! lease, throughput and CPU are summed over the nodes, and a last phase
//! ([`failover`]) kills the holder with `kill -9` mid-stream and times the
//! failover.
//!
//! `--journal node` runs the hand-written Node.js client of `bench/node/`
//! ([`node`]) in the daemon's place, with the same phases and checks, and
//! the report gives zoomwire's figures over the client's.

pub mod disk;
pub mod failover;
pub mod ledger;
pub mod node;
pub mod process;
pub mod scratch_pg;
pub mod workload;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::sim::{SecondConnection, SimConfig, SimError, SimHandle};
use disk::{Commits, Fsync, commit_buckets, measure_fsync};
use failover::Failover;
use ledger::{Delivery, Ledger, sent_time};
use node::{NodeClient, NodeClientError};
use process::{DaemonProcess, Memory, ThreadCpu, counter_by, counter_sum};
use scratch_pg::{ScratchError, ScratchPostgres};
use workload::{BenchEvent, Generator};

/// How long the daemon may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the counts may stand still before the bench gives up.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often completion is checked (the simulator's post count, in this process).
const POLL: Duration = Duration::from_millis(5);
/// How often the daemon's `/metrics` is read while posts are still missing.
/// Rendering it costs the daemon CPU that the throughput phase counts, so it
/// is read every [`POLL`] only once every expected post has arrived.
const METRICS_POLL: Duration = Duration::from_millis(100);
/// Events sent (and processed) before measuring.
const WARM_UP: usize = 2_000;
/// How long to wait after the last expected post for a doubled one.
const SETTLE: Duration = Duration::from_millis(500);

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Events of the throughput phase.
    pub events: usize,
    /// Events per second of the latency phase.
    pub rate: u32,
    /// Length of the latency phase.
    pub duration: Duration,
    /// The journals to measure, one daemon each, in this order.
    pub journals: Vec<BenchJournal>,
    /// The executable to run as the daemon (this one by default).
    pub daemon_exe: PathBuf,
    /// The folder of the Node client `--journal node` runs ([`node`]).
    pub node_client: PathBuf,
    /// Daemons sharing the database with `--journal postgres` (1: one node,
    /// no failover phase); the other journals always have one.
    pub nodes: usize,
    /// The nodes' `ZOOMWIRE_LEASE_TTL` (`None`: zoomwire's default, 8 s).
    pub lease_ttl: Option<Duration>,
    /// The database of `--journal postgres` (`None`: a scratch server the
    /// bench starts and removes).
    pub database_url: Option<String>,
    /// The Cargo profile that built the daemon (`release`, `dist`), named in
    /// the report's header.
    pub build: &'static str,
}

/// A journal the daemon under test uses (`--journal`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchJournal {
    /// SQLite in WAL mode with synchronous=FULL, as `zoomwire run` by default
    #[default]
    #[value(alias = "on")]
    Full,
    /// SQLite in WAL mode with synchronous=NORMAL (`ZOOMWIRE_JOURNAL_SYNC=normal`)
    Normal,
    /// In memory (`ZOOMWIRE_JOURNAL=memory`)
    #[value(alias = "off")]
    Memory,
    /// PostgreSQL: at ZOOMWIRE_DATABASE_URL if set (use a scratch database:
    /// the bench's events and runs stay in it), else on a scratch server the
    /// bench starts (PostgreSQL's initdb and pg_ctl must be installed)
    Postgres,
    /// Not zoomwire: the hand-written Node.js client of bench/node (no
    /// journal), run in the daemon's place to compare against (`npm ci` in
    /// its folder first)
    Node,
}

impl BenchJournal {
    /// As the report describes it.
    fn describe(self) -> &'static str {
        match self {
            BenchJournal::Full => "sqlite, synchronous=FULL (the default)",
            BenchJournal::Normal => "sqlite, synchronous=NORMAL",
            BenchJournal::Memory => "memory",
            BenchJournal::Postgres => "postgres",
            BenchJournal::Node => "none (the hand-written Node.js client of bench/node)",
        }
    }

    /// What the bench starts for it: zoomwire's daemon, or the Node client.
    fn process(self) -> &'static str {
        match self {
            BenchJournal::Node => "client",
            _ => "daemon",
        }
    }

    /// As `--journal` takes it.
    fn flag(self) -> &'static str {
        match self {
            BenchJournal::Full => "full",
            BenchJournal::Normal => "normal",
            BenchJournal::Memory => "memory",
            BenchJournal::Postgres => "postgres",
            BenchJournal::Node => "node",
        }
    }

    /// The daemon's settings for it (with PostgreSQL, the URL is added from
    /// the bench's environment).
    /// The Node client has none.
    fn settings(self) -> &'static [(&'static str, &'static str)] {
        match self {
            BenchJournal::Full => &[
                ("ZOOMWIRE_JOURNAL", "sqlite"),
                ("ZOOMWIRE_JOURNAL_SYNC", "full"),
            ],
            BenchJournal::Normal => &[
                ("ZOOMWIRE_JOURNAL", "sqlite"),
                ("ZOOMWIRE_JOURNAL_SYNC", "normal"),
            ],
            BenchJournal::Memory => &[
                ("ZOOMWIRE_JOURNAL", "memory"),
                ("ZOOMWIRE_JOURNAL_SYNC", "full"),
            ],
            BenchJournal::Postgres => &[
                ("ZOOMWIRE_JOURNAL", "postgres"),
                ("ZOOMWIRE_JOURNAL_SYNC", "full"),
            ],
            BenchJournal::Node => &[],
        }
    }
}

/// The variable `--journal postgres` reads the database from.
pub const DATABASE_URL_VAR: &str = "ZOOMWIRE_DATABASE_URL";

/// Why the bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Sim(#[from] SimError),
    #[error("bench setup: {0}")]
    Setup(#[from] std::io::Error),
    #[error(
        "the daemon did not connect to the simulator within {timeout:?}; its log ends with:\n{log}"
    )]
    NotConnected { timeout: Duration, log: String },
    #[error(transparent)]
    Postgres(#[from] ScratchError),
    #[error(transparent)]
    Node(#[from] NodeClientError),
}

/// The measured figures of every journal, and the disk's.
#[derive(Debug, Clone, Default)]
pub struct BenchReport {
    pub fsync: Option<Fsync>,
    pub journals: Vec<JournalReport>,
}

/// The figures of one daemon, on one journal.
#[derive(Debug, Clone, Default)]
pub struct JournalReport {
    /// The daemons' process ids, one per node.
    pub pids: Vec<u32>,
    pub journal: BenchJournal,
    /// `--lease-ttl` of the nodes, when several.
    pub lease_ttl: Option<Duration>,
    /// RSS once connected, before any event.
    pub idle: Option<Memory>,
    pub throughput: Option<Throughput>,
    pub latency: Option<Latency>,
    pub memory_throughput: Option<Memory>,
    pub memory_latency: Option<Memory>,
    pub delivery: Delivery,
    /// With several nodes: the holder killed mid-stream.
    pub failover: Option<Failover>,
    /// The daemons' runs by outcome at the end (the killed node's excluded).
    pub runs: BTreeMap<String, f64>,
    pub events_counted: f64,
    /// The end of each daemon's log (warnings and errors).
    pub log_tail: String,
    /// With `--journal node`: the client's `node --version`.
    pub node_version: Option<String>,
}

impl JournalReport {
    /// Everything expected happened: both phases finished and every post
    /// arrived exactly once.
    pub fn complete(&self) -> bool {
        let throughput = self
            .throughput
            .as_ref()
            .is_some_and(|t| t.elapsed.is_some());
        let latency = self
            .latency
            .as_ref()
            .is_some_and(|l| l.micros.len() == l.posts_expected);
        let failover =
            self.pids.len() < 2 || self.failover.as_ref().is_some_and(Failover::complete);
        throughput && latency && failover && self.delivery.exact()
    }
}

/// The throughput phase.
#[derive(Debug, Clone, Default)]
pub struct Throughput {
    pub events: usize,
    pub posts: usize,
    /// First frame sent to last frame taken by the WebSocket.
    pub sending: Duration,
    /// First frame sent to everything processed; `None` if it never was.
    pub elapsed: Option<Duration>,
    /// The daemon's CPU time over the phase.
    pub cpu: Option<Duration>,
    /// The same by kind of thread (`zoomwire-writer`, `tokio-rt-worker`,
    /// ...), from the kernel's per-thread figures; empty where unknown.
    pub cpu_by_thread: BTreeMap<String, Duration>,
}

impl Throughput {
    pub fn events_per_second(&self) -> Option<f64> {
        self.elapsed
            .map(|elapsed| self.events as f64 / elapsed.as_secs_f64())
    }

    /// The daemon's CPU time per event, in microseconds.
    pub fn cpu_micros_per_event(&self) -> Option<f64> {
        self.cpu.map(|cpu| self.per_event(cpu))
    }

    /// Microseconds of `cpu` per event of the phase.
    fn per_event(&self, cpu: Duration) -> f64 {
        micros_per_event(cpu, self.events)
    }

    /// "kind 8.1, other kind 2.0": the CPU per event of each kind of
    /// thread that shows as at least 0.1 µs (0.05 rounded), most first;
    /// `None` when unknown.
    pub fn cpu_split(&self) -> Option<String> {
        let mut parts: Vec<(f64, &str)> = self
            .cpu_by_thread
            .iter()
            .map(|(kind, cpu)| (self.per_event(*cpu), kind.as_str()))
            .filter(|(us, _)| *us >= 0.05)
            .collect();
        parts.sort_by(|a, b| b.0.total_cmp(&a.0));
        let parts: Vec<String> = parts
            .iter()
            .map(|(us, kind)| format!("{kind} {us:.1}"))
            .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

/// The latency phase.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    pub events: usize,
    pub rate: u32,
    pub posts_expected: usize,
    /// Frame sent to post received, in microseconds, sorted.
    pub micros: Vec<i64>,
    /// The journal's commits during the phase, where it reports them.
    pub commits: Option<Commits>,
    /// The daemon's CPU time over the phase: at a steady rate each event
    /// arrives alone, so it pays for the wake-ups a burst shares.
    pub cpu: Option<Duration>,
}

impl Latency {
    /// The `p`-th percentile (0..=100) in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> Option<f64> {
        percentile(&self.micros, p).map(|us| us as f64 / 1000.0)
    }

    /// The daemon's CPU time per event of the phase, in microseconds.
    pub fn cpu_micros_per_event(&self) -> Option<f64> {
        self.cpu.map(|cpu| micros_per_event(cpu, self.events))
    }
}

/// Microseconds of `cpu` per event, for a phase of `events` events.
fn micros_per_event(cpu: Duration, events: usize) -> f64 {
    cpu.as_secs_f64() * 1e6 / events.max(1) as f64
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Runs the whole bench, printing progress to stderr.
pub async fn run_bench(options: &BenchOptions) -> Result<BenchReport, BenchError> {
    let node_client = if options.journals.contains(&BenchJournal::Node) {
        Some(NodeClient::find(&options.node_client)?)
    } else {
        None
    };
    let scratch = tempfile::Builder::new()
        .prefix("zoomwire-bench-")
        .tempdir()?;
    eprintln!(
        "bench: timing fdatasync of 4 KiB appends for {} s",
        options.duration.as_secs()
    );
    let mut report = BenchReport {
        fsync: measure_fsync(scratch.path(), options.duration).ok(),
        journals: Vec::new(),
    };
    // Kept until the end: the server goes when it drops.
    let mut server = None;
    let mut database = options.database_url.clone();
    if database.is_none() && options.journals.contains(&BenchJournal::Postgres) {
        eprintln!("bench: starting a scratch PostgreSQL server (no {DATABASE_URL_VAR} given)");
        let started = ScratchPostgres::start()?;
        database = Some(started.url());
        server = Some(started);
    }
    for (index, &journal) in options.journals.iter().enumerate() {
        let dir = scratch.path().join(format!("{index}-{}", journal.flag()));
        report.journals.push(
            bench_journal(
                options,
                journal,
                &dir,
                database.as_deref(),
                node_client.as_ref(),
            )
            .await?,
        );
    }
    drop(server);
    Ok(report)
}

/// The daemons (one, or `--nodes` on PostgreSQL) on one journal through
/// every phase.
async fn bench_journal(
    options: &BenchOptions,
    journal: BenchJournal,
    dir: &Path,
    database: Option<&str>,
    node_client: Option<&NodeClient>,
) -> Result<JournalReport, BenchError> {
    let nodes = if journal == BenchJournal::Postgres {
        options.nodes.max(1)
    } else {
        1
    };
    let sim = crate::sim::start(SimConfig {
        participants_per_meeting: 10,
        // Two holders at once would both get every frame, and be seen.
        second_connection: if nodes > 1 {
            SecondConnection::Both
        } else {
            SecondConnection::default()
        },
        ..SimConfig::default()
    })
    .await?;
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules)?;
    std::fs::create_dir_all(dir.join("scripts"))?;
    std::fs::write(rules.join("bench.yaml"), workload::rules_yaml())?;

    let settings = DaemonSettings {
        journal,
        database,
        nodes,
        lease_ttl: options.lease_ttl,
        node_client: node_client.filter(|_| journal == BenchJournal::Node),
    };
    let daemons = start_daemons(options, &sim, dir, &settings).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut report = JournalReport {
        pids: daemons.iter().map(DaemonProcess::pid).collect(),
        journal,
        lease_ttl: (nodes > 1).then(|| options.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL)),
        node_version: settings.node_client.map(|client| client.version.clone()),
        ..JournalReport::default()
    };
    let mut bench = Bench {
        sim: &sim,
        daemons: daemons.into_iter().map(Some).collect(),
        events_sent: 0,
        counted_by_killed: 0.0,
        ledger: Ledger::default(),
    };
    report.idle = bench.memory();
    let mut generator = Generator::new(42, chrono::Utc::now().timestamp_millis());
    eprintln!(
        "bench: journal {}: {} connected (pids {:?}); warming up with {WARM_UP} events",
        journal.flag(),
        if nodes > 1 {
            format!("{nodes} nodes")
        } else {
            journal.process().into()
        },
        report.pids
    );
    bench.throughput(generator.take(WARM_UP)).await;
    bench.reset_peak();
    eprintln!(
        "bench: throughput, {} events (with bursts) as fast as the WebSocket takes them",
        options.events
    );
    report.throughput = Some(bench.throughput(generator.take(options.events)).await);
    report.memory_throughput = bench.memory();
    bench.reset_peak();
    eprintln!(
        "bench: latency, {} events/s for {}s",
        options.rate,
        options.duration.as_secs()
    );
    generator.with_bursts(false);
    report.latency = Some(bench.latency(&mut generator, options).await);
    report.memory_latency = bench.memory();
    if nodes > 1 {
        let lease = report.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL);
        eprintln!(
            "bench: failover, {} events/s; kill -9 of the holder after {:?} (lease {lease:?})",
            options.rate,
            failover::BEFORE_KILL
        );
        report.failover = Some(bench.failover(&mut generator, options.rate, lease).await);
    }
    tokio::time::sleep(SETTLE).await;
    let posts = sim.slack_posts();
    report.delivery = bench
        .ledger
        .check(posts.iter().filter_map(|post| post.text.as_deref()));
    for metrics in bench.all_metrics().await {
        for (outcome, n) in counter_by(&metrics, "zoomwire_runs_total", Some("outcome")) {
            *report.runs.entry(outcome).or_default() += n;
        }
        report.events_counted += counter_sum(&metrics, "zoomwire_events_total");
    }
    report.events_counted += bench.counted_by_killed;
    report.log_tail = bench.log_tails(30);
    for daemon in bench.daemons.into_iter().flatten() {
        daemon.stop();
    }
    let _ = sim.shutdown().await;
    Ok(report)
}

/// zoomwire's own `ZOOMWIRE_LEASE_TTL` default.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(8);

/// What the daemons of one journal are started with.
struct DaemonSettings<'a> {
    journal: BenchJournal,
    database: Option<&'a str>,
    nodes: usize,
    lease_ttl: Option<Duration>,
    /// With `--journal node`: the client started in the daemon's place.
    node_client: Option<&'a NodeClient>,
}

/// Starts the daemons: the first alone, until it holds the WebSocket (and
/// has made the data folder's seal key, which the others share, as the
/// README asks of nodes), then the others, until each answers `/metrics`.
async fn start_daemons(
    options: &BenchOptions,
    sim: &SimHandle,
    dir: &Path,
    settings: &DaemonSettings<'_>,
) -> Result<Vec<DaemonProcess>, BenchError> {
    let mut daemons = Vec::new();
    for node in 0..settings.nodes {
        let admin = free_port()?;
        let env = daemon_env(sim, dir, admin, settings, node);
        let log = if settings.node_client.is_some() {
            "node-client.log".into()
        } else if settings.nodes > 1 {
            format!("daemon-{node}.log")
        } else {
            "daemon.log".into()
        };
        let argv = match settings.node_client {
            Some(client) => client.argv(),
            None => vec![options.daemon_exe.clone().into(), "run".into()],
        };
        let mut daemon = DaemonProcess::spawn(&argv, dir, &env, admin, &log)?;
        let ready = if node == 0 {
            wait_connected(sim, &mut daemon).await
        } else {
            wait_answering(&mut daemon).await
        };
        if !ready {
            let log = daemon.log_tail(20);
            daemon.stop();
            return Err(BenchError::NotConnected {
                timeout: CONNECT_TIMEOUT,
                log,
            });
        }
        daemons.push(daemon);
    }
    Ok(daemons)
}

/// A port free now on loopback, for the daemon's admin API.
fn free_port() -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    listener.local_addr()
}

fn daemon_env(
    sim: &SimHandle,
    dir: &Path,
    admin: SocketAddr,
    settings: &DaemonSettings<'_>,
    node: usize,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = sim
        .env_lines()
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let path = |name: &str| dir.join(name).display().to_string();
    let rust_log = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "warn".into());
    for (name, value) in [
        ("ZOOMWIRE_RULES", path("rules")),
        ("ZOOMWIRE_SCRIPTS", path("scripts")),
        ("ZOOMWIRE_DATA", path("data")),
        ("ZOOMWIRE_ADMIN_ADDR", admin.to_string()),
        ("RUST_LOG", rust_log),
    ] {
        env.insert(name.to_string(), value);
    }
    for (name, value) in settings.journal.settings() {
        env.insert(name.to_string(), value.to_string());
    }
    if settings.node_client.is_some() {
        env.extend(NodeClient::path_var());
    }
    if settings.journal == BenchJournal::Postgres
        && let Some(url) = settings.database
    {
        env.insert(DATABASE_URL_VAR.to_string(), url.to_string());
        env.insert("ZOOMWIRE_NODE_ID".to_string(), format!("bench-{node}"));
        if let Some(ttl) = settings.lease_ttl {
            env.insert(
                "ZOOMWIRE_LEASE_TTL".to_string(),
                format!("{}ms", ttl.as_millis()),
            );
        }
    }
    env
}

async fn wait_connected(sim: &SimHandle, daemon: &mut DaemonProcess) -> bool {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    while Instant::now() < deadline {
        if daemon.exited().is_some() {
            return false;
        }
        if sim
            .wait_for_connections(sim.subscription_id(), 1, Duration::from_millis(200))
            .await
        {
            return true;
        }
    }
    false
}

/// Waits until a node that does not hold the WebSocket answers `/metrics`.
async fn wait_answering(daemon: &mut DaemonProcess) -> bool {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    while Instant::now() < deadline {
        if daemon.exited().is_some() {
            return false;
        }
        if daemon.metrics().await.is_some() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The phases share what was sent so far, to know what to wait for.
struct Bench<'a> {
    sim: &'a SimHandle,
    /// The nodes; `None` once killed.
    daemons: Vec<Option<DaemonProcess>>,
    /// Events that reached a node (those sent while no node held the
    /// WebSocket are not counted: nobody got them).
    events_sent: usize,
    /// Events the killed nodes had counted when they were killed.
    counted_by_killed: f64,
    ledger: Ledger,
}

impl Bench<'_> {
    fn alive(&self) -> impl Iterator<Item = &DaemonProcess> {
        self.daemons.iter().flatten()
    }

    /// CPU time of the live nodes together.
    fn cpu_time(&self) -> Option<Duration> {
        self.alive().map(DaemonProcess::cpu_time).sum()
    }

    /// CPU time of the live nodes' threads.
    fn thread_cpu(&self) -> ThreadCpu {
        self.alive()
            .map(DaemonProcess::thread_cpu)
            .fold(ThreadCpu::default(), ThreadCpu::merge)
    }

    /// The memory of the node with the highest peak.
    fn memory(&self) -> Option<Memory> {
        self.alive()
            .filter_map(DaemonProcess::memory)
            .max_by_key(|m| m.peak_kib)
    }

    fn reset_peak(&self) {
        for daemon in self.alive() {
            daemon.reset_peak();
        }
    }

    /// The `/metrics` of every live node that answers.
    async fn all_metrics(&self) -> Vec<String> {
        let mut all = Vec::new();
        for daemon in self.alive() {
            all.extend(daemon.metrics().await);
        }
        all
    }

    /// Events counted by all nodes, the killed ones included; `None` when a
    /// live node does not answer.
    async fn events_counted(&self) -> Option<f64> {
        let mut sum = self.counted_by_killed;
        for daemon in self.alive() {
            sum += counter_sum(&daemon.metrics().await?, "zoomwire_events_total");
        }
        Some(sum)
    }

    /// The end of each live node's log.
    fn log_tails(&self, lines: usize) -> String {
        let tails: Vec<String> = self
            .alive()
            .map(|d| format!("[pid {}]\n{}", d.pid(), d.log_tail(lines)))
            .collect();
        tails.join("\n")
    }

    /// Notes what the events must cause.
    fn expect(&mut self, events: &[BenchEvent]) -> usize {
        self.events_sent += events.len();
        for event in events {
            self.ledger.expect(event.ts, event.posts.iter().copied());
        }
        events.iter().map(|e| e.posts.len()).sum()
    }

    /// Sends `events` as fast as they are taken and waits until all are processed.
    async fn throughput(&mut self, events: Vec<BenchEvent>) -> Throughput {
        let count = events.len();
        let posts = self.expect(&events);
        let sent_us = chrono::Utc::now().timestamp_micros();
        let frames: Vec<String> = events.iter().map(|e| e.frame_sent_at(sent_us)).collect();
        drop(events);
        let cpu_before = self.cpu_time();
        let threads_before = self.thread_cpu();
        let started = Instant::now();
        for frame in frames {
            self.sim.send_frame(None, frame).await;
        }
        let sending = started.elapsed();
        let done = self.wait_processed().await;
        let cpu = self
            .cpu_time()
            .zip(cpu_before)
            .map(|(after, before)| after.saturating_sub(before));
        let cpu_by_thread = self.thread_cpu().since(&threads_before);
        Throughput {
            events: count,
            posts,
            sending,
            elapsed: done.map(|at| at - started),
            cpu,
            cpu_by_thread,
        }
    }

    /// Sends at a fixed rate, each frame stamped as it goes, and collects
    /// the latency of every post the phase caused.
    async fn latency(&mut self, generator: &mut Generator, options: &BenchOptions) -> Latency {
        let count = (options.rate as u64 * options.duration.as_secs()).max(1) as usize;
        let events = generator.take(count);
        let posts = self.expect(&events);
        let first_post = self.sim.slack_post_count();
        let commits_before = commit_buckets(&self.all_metrics().await);
        let period = Duration::from_secs_f64(1.0 / f64::from(options.rate.max(1)));
        let cpu_before = self.cpu_time();
        let started = Instant::now();
        for (i, event) in events.iter().enumerate() {
            let due = started + period.mul_f64(i as f64);
            if Instant::now() < due {
                tokio::time::sleep_until(due).await;
            }
            let frame = event.frame_sent_at(chrono::Utc::now().timestamp_micros());
            self.sim.send_frame(None, frame).await;
        }
        self.wait_processed().await;
        let cpu = self
            .cpu_time()
            .zip(cpu_before)
            .map(|(after, before)| after.saturating_sub(before));
        let commits_after = commit_buckets(&self.all_metrics().await);
        let mut micros: Vec<i64> = self.sim.slack_posts()[first_post..]
            .iter()
            .filter_map(|post| {
                let sent = sent_time(post.text.as_deref()?)?;
                Some(post.received_at_micros - sent)
            })
            .collect();
        micros.sort_unstable();
        Latency {
            events: count,
            rate: options.rate,
            posts_expected: posts,
            micros,
            commits: Commits::between(&commits_before, &commits_after),
            cpu,
        }
    }

    /// Waits until the daemon counted every event sent and the simulator
    /// got every post expected; the moment it saw both, or `None`.
    /// Gives up when nothing moved for [`STALL_TIMEOUT`].
    async fn wait_processed(&self) -> Option<Instant> {
        let mut events_done = false;
        let mut last_progress = Instant::now();
        let mut seen = (0.0, 0);
        let mut events = 0.0;
        let mut last_read: Option<Instant> = None;
        let posts_expected = self.ledger.expected();
        loop {
            let posts = self.sim.slack_post_count();
            let read_due = last_read.is_none_or(|at| at.elapsed() >= METRICS_POLL);
            if !events_done && (posts >= posts_expected || read_due) {
                events = self.events_counted().await.unwrap_or(0.0);
                last_read = Some(Instant::now());
            }
            events_done = events >= self.events_sent as f64;
            if events_done && posts >= posts_expected {
                return Some(Instant::now());
            }
            if (events, posts) != seen {
                seen = (events, posts);
                last_progress = Instant::now();
            } else if last_progress.elapsed() > STALL_TIMEOUT {
                eprintln!(
                    "bench: stalled at {events} of {} events and {posts} of {posts_expected} Slack posts",
                    self.events_sent
                );
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The report as printed, with the command that reproduces it.
pub fn format_report(report: &BenchReport, options: &BenchOptions) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "zoomwire bench ({} build): 20 rules with default settings (10 post to Slack), {} events with bursts, then {} events/s for {} s",
        if cfg!(debug_assertions) {
            "DEBUG"
        } else {
            options.build
        },
        options.events,
        options.rate,
        options.duration.as_secs()
    );
    let fsync_p99 = report.fsync.as_ref().and_then(|f| f.percentile_ms(99.0));
    if let Some(fsync) = &report.fsync {
        let _ = writeln!(
            out,
            "  disk        fdatasync of a 4 KiB append, {} in {:.1} s: p50 {}, p99 {}, max {}, {} over {} ms (the floor under the durable journal's latency)",
            fsync.micros.len(),
            fsync.span.as_secs_f64(),
            ms(fsync.percentile_ms(50.0)),
            ms(fsync_p99),
            ms(fsync.percentile_ms(100.0)),
            fsync.stalls(),
            disk::STALL.as_millis()
        );
    }
    for journal in &report.journals {
        format_journal(&mut out, journal, fsync_p99);
    }
    let mut flags: String = options
        .journals
        .iter()
        .map(|j| format!(" --journal {}", j.flag()))
        .collect();
    if options.nodes > 1 {
        let _ = write!(flags, " --nodes {}", options.nodes);
    }
    if let Some(ttl) = options.lease_ttl {
        let _ = write!(flags, " --lease-ttl {}", ttl.as_secs());
    }
    if let Some(line) = node::comparison(report) {
        let _ = writeln!(out, "  {line}");
    }
    let _ = writeln!(
        out,
        "  command     zoomwire bench --events {} --rate {} --seconds {}{flags}",
        options.events,
        options.rate,
        options.duration.as_secs(),
    );
    out
}

/// The journal's commits in the latency phase, in words.
fn describe_commits(commits: &Commits) -> String {
    if commits.count == 0 {
        return "no journal commits in the latency phase".into();
    }
    let slowest = match commits.slowest_under {
        Some(bound) => format!("under {} ms", (bound.as_secs_f64() * 1e5).round() / 100.0),
        None => "past the histogram's last bound".into(),
    };
    format!(
        "{} journal commits in the latency phase, {} over {} ms (a stalled commit holds every post behind it); the slowest {slowest}",
        commits.count,
        commits.stalls,
        disk::STALL.as_millis()
    )
}

fn ms(value: Option<f64>) -> String {
    value
        .map(|v| format!("{v:.2} ms"))
        .unwrap_or_else(|| "-".into())
}

fn format_journal(out: &mut String, report: &JournalReport, fsync_p99: Option<f64>) {
    let who = match (report.pids.as_slice(), &report.node_version) {
        ([pid], Some(version)) => format!("node {version}, pid {pid}"),
        ([pid], None) => format!("daemon pid {pid}"),
        (pids, _) => format!(
            "{} nodes, pids {pids:?}, lease {:?}; throughput and CPU summed over the nodes",
            pids.len(),
            report.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL)
        ),
    };
    let _ = writeln!(
        out,
        "  journal {} ({who}){}",
        report.journal.describe(),
        if report.complete() { "" } else { ": FAILED" }
    );
    if let Some(t) = &report.throughput {
        let rate = t
            .events_per_second()
            .map(|r| format!("{r:.0} events/s"))
            .unwrap_or_else(|| "did not finish".into());
        let cpu = t
            .cpu_micros_per_event()
            .map(|us| format!("{us:.1} µs CPU per event"))
            .unwrap_or_else(|| "CPU time unknown".into());
        let _ = writeln!(
            out,
            "    throughput  {rate}, {cpu}: {} events in {}, {} Slack posts",
            t.events,
            t.elapsed
                .map(|e| format!("{:.3} s", e.as_secs_f64()))
                .unwrap_or_else(|| "-".into()),
            t.posts
        );
        if let Some(split) = t.cpu_split() {
            let _ = writeln!(
                out,
                "    cpu split   µs per event by kind of thread: {split}"
            );
        }
    }
    if let Some(l) = &report.latency {
        let over_disk = l
            .percentile_ms(99.0)
            .zip(fsync_p99)
            .filter(|(_, disk)| *disk > 0.0)
            .map(|(p99, disk)| format!("; p99 is {:.1}x the disk's fdatasync p99", p99 / disk))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "    latency     frame sent -> Slack post received at {} events/s: p50 {}, p99 {}, max {} ({} of {} posts){over_disk}",
            l.rate,
            ms(l.percentile_ms(50.0)),
            ms(l.percentile_ms(99.0)),
            ms(l.percentile_ms(100.0)),
            l.micros.len(),
            l.posts_expected
        );
        if let Some(us) = l.cpu_micros_per_event() {
            let _ = writeln!(
                out,
                "    steady cpu  {us:.1} µs CPU per event at {} events/s (each event alone: no batch shares its wake-ups)",
                l.rate
            );
        }
        if let Some(commits) = &l.commits {
            let _ = writeln!(out, "    commits     {}", describe_commits(commits));
        }
    }
    let mib = |m: Option<Memory>, peak: bool| {
        m.map(|m| {
            let kib = if peak { m.peak_kib } else { m.now_kib };
            format!("{:.1} MiB", kib as f64 / 1024.0)
        })
        .unwrap_or_else(|| "-".into())
    };
    let _ = writeln!(
        out,
        "    memory      RSS idle {}; peak (VmHWM) {} in the throughput phase, {} in the latency phase",
        mib(report.idle, false),
        mib(report.memory_throughput, true),
        mib(report.memory_latency, true),
    );
    if let Some(f) = &report.failover {
        failover::format(out, f);
    }
    let _ = writeln!(out, "    delivery    {}", report.delivery);
    let runs: Vec<String> = report
        .runs
        .iter()
        .map(|(outcome, n)| format!("{n:.0} {outcome}"))
        .collect();
    let _ = writeln!(
        out,
        "    {}      {:.0} events counted, runs{}: {}",
        report.journal.process(),
        report.events_counted,
        if report.failover.is_some() {
            " by the surviving nodes"
        } else {
            ""
        },
        if runs.is_empty() {
            "none".into()
        } else {
            runs.join(", ")
        }
    );
}

/// Whether every journal saw everything it expected, exactly once.
pub fn complete(report: &BenchReport) -> bool {
    report.journals.iter().all(JournalReport::complete)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_split_lists_kinds_of_thread_most_first() {
        let ms = Duration::from_millis;
        let mut t = Throughput {
            events: 1000,
            cpu_by_thread: BTreeMap::from([
                ("tokio-rt-worker".to_string(), ms(10)),
                ("zoomwire-writer".to_string(), ms(12)),
                ("notify-rs".to_string(), Duration::from_micros(20)),
            ]),
            ..Throughput::default()
        };
        // 12 ms over 1,000 events is 12 µs each; 20 µs in all is too little to list.
        assert_eq!(
            t.cpu_split().as_deref(),
            Some("zoomwire-writer 12.0, tokio-rt-worker 10.0")
        );
        t.cpu_by_thread.clear();
        assert_eq!(t.cpu_split(), None);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50.0), Some(50));
        assert_eq!(percentile(&values, 99.0), Some(99));
        assert_eq!(percentile(&values, 100.0), Some(100));
        assert_eq!(percentile(&values, 0.0), Some(1));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn the_journals_commits_are_described() {
        let mut commits = Commits {
            count: 1000,
            stalls: 2,
            slowest_under: Some(Duration::from_millis(50)),
        };
        assert_eq!(
            describe_commits(&commits),
            "1000 journal commits in the latency phase, 2 over 10 ms (a stalled commit holds every post behind it); the slowest under 50 ms"
        );
        commits.slowest_under = Some(Duration::from_micros(2500));
        assert!(describe_commits(&commits).ends_with("under 2.5 ms"));
        commits.slowest_under = None;
        assert!(describe_commits(&commits).ends_with("past the histogram's last bound"));
        commits.count = 0;
        assert_eq!(
            describe_commits(&commits),
            "no journal commits in the latency phase"
        );
    }
}
