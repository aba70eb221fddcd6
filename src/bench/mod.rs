//! `zoomwire bench`: drives a real daemon from the simulator's WebSocket and
//! measures it end to end.
//!
//! This process hosts the simulator; the daemon is `zoomwire run` (this
//! same executable) in a separate process pointed at it, with the 20 rules
//! of [`workload`] in a scratch folder, so its peak memory is its own.
//! Three figures come out:
//!
//! - throughput: N events of the mix sent as fast as the WebSocket takes
//!   them, from the first frame sent until the daemon counted all of them
//!   (`zoomwire_events_total` on `/metrics`) and the simulator received
//!   every Slack post they cause;
//! - latency: events at a fixed rate, each carrying its send time, which the
//!   posting rules copy into the message; the simulator stamps each post
//!   when it arrives, so latency is frame sent to Slack post received;
//! - memory: the daemon's `VmHWM` from `/proc/<pid>/status`, reset between
//!   the phases so each has its own peak.

pub mod process;
pub mod workload;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use crate::sim::{SimConfig, SimError, SimHandle};
use process::{DaemonProcess, Memory, counter_by, counter_sum};
use workload::{BenchEvent, Generator};

/// How long the daemon may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the counts may stand still before the bench gives up.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often completion is checked.
const POLL: Duration = Duration::from_millis(5);
/// Events sent (and processed) before measuring.
const WARM_UP: usize = 2_000;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Events of the throughput phase.
    pub events: usize,
    /// Events per second of the latency phase.
    pub rate: u32,
    /// Length of the latency phase.
    pub duration: Duration,
    /// The daemon's journal.
    pub journal: BenchJournal,
    /// The executable to run as the daemon (this one by default).
    pub daemon_exe: PathBuf,
}

/// The journal the daemon under test uses (`--journal`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchJournal {
    /// SQLite in WAL mode with synchronous=FULL, as `zoomwire run` by default
    #[default]
    #[value(alias = "on")]
    Full,
    /// SQLite in WAL mode with synchronous=NORMAL (`ZOOMWIRE_JOURNAL_SYNC=normal`)
    Normal,
    /// In memory (`ZOOMWIRE_JOURNAL=memory`)
    #[value(name = "off")]
    Memory,
}

impl BenchJournal {
    /// As the report describes it.
    fn describe(self) -> &'static str {
        match self {
            BenchJournal::Full => "sqlite (synchronous=FULL)",
            BenchJournal::Normal => "sqlite (synchronous=NORMAL)",
            BenchJournal::Memory => "memory",
        }
    }

    /// As `--journal` takes it.
    fn flag(self) -> &'static str {
        match self {
            BenchJournal::Full => "full",
            BenchJournal::Normal => "normal",
            BenchJournal::Memory => "off",
        }
    }
}

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
}

/// The measured figures.
#[derive(Debug, Clone, Default)]
pub struct BenchReport {
    pub pid: u32,
    pub journal: BenchJournal,
    pub throughput: Option<Throughput>,
    pub latency: Option<Latency>,
    pub memory_throughput: Option<Memory>,
    pub memory_latency: Option<Memory>,
    /// The daemon's runs by outcome at the end.
    pub runs: BTreeMap<String, f64>,
    pub events_counted: f64,
    /// The end of the daemon's log (warnings and errors).
    pub log_tail: String,
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
}

impl Throughput {
    pub fn events_per_second(&self) -> Option<f64> {
        self.elapsed
            .map(|elapsed| self.events as f64 / elapsed.as_secs_f64())
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
}

impl Latency {
    /// The `p`-th percentile (0..=100) in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> Option<f64> {
        percentile(&self.micros, p).map(|us| us as f64 / 1000.0)
    }
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
    let sim = crate::sim::start(SimConfig {
        participants_per_meeting: 10,
        ..SimConfig::default()
    })
    .await?;
    let scratch = tempfile::Builder::new()
        .prefix("zoomwire-bench-")
        .tempdir()?;
    let rules = scratch.path().join("rules");
    std::fs::create_dir_all(&rules)?;
    std::fs::create_dir_all(scratch.path().join("scripts"))?;
    std::fs::write(rules.join("bench.yaml"), workload::rules_yaml())?;

    let admin = free_port()?;
    let env = daemon_env(&sim, scratch.path(), admin, options.journal);
    let mut daemon = DaemonProcess::spawn(&options.daemon_exe, scratch.path(), &env, admin)?;
    let mut report = BenchReport {
        pid: daemon.pid(),
        journal: options.journal,
        ..BenchReport::default()
    };
    if !wait_connected(&sim, &mut daemon).await {
        let log = daemon.log_tail(20);
        daemon.stop();
        return Err(BenchError::NotConnected {
            timeout: CONNECT_TIMEOUT,
            log,
        });
    }
    let mut generator = Generator::new(42, chrono::Utc::now().timestamp_millis());
    let mut bench = Bench {
        sim: &sim,
        daemon: &daemon,
        events_sent: 0,
        posts_expected: 0,
    };
    eprintln!(
        "bench: daemon pid {} connected; warming up with {WARM_UP} events",
        daemon.pid()
    );
    bench.throughput(generator.take(WARM_UP)).await;
    daemon.reset_peak();
    eprintln!(
        "bench: throughput, {} events as fast as the WebSocket takes them",
        options.events
    );
    report.throughput = Some(bench.throughput(generator.take(options.events)).await);
    report.memory_throughput = daemon.memory();
    daemon.reset_peak();
    eprintln!(
        "bench: latency, {} events/s for {}s",
        options.rate,
        options.duration.as_secs()
    );
    report.latency = Some(bench.latency(&mut generator, options).await);
    report.memory_latency = daemon.memory();
    if let Some(metrics) = daemon.metrics().await {
        report.runs = counter_by(&metrics, "zoomwire_runs_total", Some("outcome"));
        report.events_counted = counter_sum(&metrics, "zoomwire_events_total");
    }
    report.log_tail = daemon.log_tail(30);
    daemon.stop();
    let _ = sim.shutdown().await;
    Ok(report)
}

/// A port free now on loopback, for the daemon's admin API.
fn free_port() -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    listener.local_addr()
}

fn daemon_env(
    sim: &SimHandle,
    dir: &std::path::Path,
    admin: SocketAddr,
    journal: BenchJournal,
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
        (
            "ZOOMWIRE_JOURNAL",
            if journal == BenchJournal::Memory {
                "memory"
            } else {
                "sqlite"
            }
            .to_string(),
        ),
        (
            "ZOOMWIRE_JOURNAL_SYNC",
            if journal == BenchJournal::Normal {
                "normal"
            } else {
                "full"
            }
            .to_string(),
        ),
        ("RUST_LOG", rust_log),
    ] {
        env.insert(name.to_string(), value);
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

/// The phases share what was sent so far, to know what to wait for.
struct Bench<'a> {
    sim: &'a SimHandle,
    daemon: &'a DaemonProcess,
    events_sent: usize,
    posts_expected: usize,
}

impl Bench<'_> {
    /// Sends `events` as fast as they are taken and waits until all are processed.
    async fn throughput(&mut self, events: Vec<BenchEvent>) -> Throughput {
        let count = events.len();
        let posts = events.iter().filter(|e| e.posts).count();
        let sent_us = chrono::Utc::now().timestamp_micros();
        let frames: Vec<String> = events.iter().map(|e| e.frame_sent_at(sent_us)).collect();
        drop(events);
        let started = Instant::now();
        for frame in frames {
            self.sim.send_frame(None, frame).await;
        }
        let sending = started.elapsed();
        self.events_sent += count;
        self.posts_expected += posts;
        let done = self.wait_processed().await;
        Throughput {
            events: count,
            posts,
            sending,
            elapsed: done.map(|at| at - started),
        }
    }

    /// Sends at a fixed rate, each frame stamped as it goes, and collects
    /// the latency of every post the phase caused.
    async fn latency(&mut self, generator: &mut Generator, options: &BenchOptions) -> Latency {
        let count = (options.rate as u64 * options.duration.as_secs()).max(1) as usize;
        let events = generator.take(count);
        let posts = events.iter().filter(|e| e.posts).count();
        let first_post = self.sim.slack_post_count();
        let period = Duration::from_secs_f64(1.0 / f64::from(options.rate.max(1)));
        let started = Instant::now();
        for (i, event) in events.iter().enumerate() {
            let due = started + period.mul_f64(i as f64);
            if Instant::now() < due {
                tokio::time::sleep_until(due).await;
            }
            let frame = event.frame_sent_at(chrono::Utc::now().timestamp_micros());
            self.sim.send_frame(None, frame).await;
        }
        self.events_sent += count;
        self.posts_expected += posts;
        self.wait_processed().await;
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
        }
    }

    /// Waits until the daemon counted every event sent and the simulator
    /// got every post expected; the moment it saw both, or `None`.
    /// Gives up when nothing moved for [`STALL_TIMEOUT`].
    async fn wait_processed(&self) -> Option<Instant> {
        let mut events_done = false;
        let mut last_progress = Instant::now();
        let mut seen = (0.0, 0);
        loop {
            let events = if events_done {
                self.events_sent as f64
            } else {
                self.daemon
                    .metrics()
                    .await
                    .map_or(0.0, |m| counter_sum(&m, "zoomwire_events_total"))
            };
            events_done = events >= self.events_sent as f64;
            let posts = self.sim.slack_post_count();
            if events_done && posts >= self.posts_expected {
                return Some(Instant::now());
            }
            if (events, posts) != seen {
                seen = (events, posts);
                last_progress = Instant::now();
            } else if last_progress.elapsed() > STALL_TIMEOUT {
                eprintln!(
                    "bench: stalled at {events} of {} events and {posts} of {} Slack posts",
                    self.events_sent, self.posts_expected
                );
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The `t=<micros>` a posting rule put in its message.
fn sent_time(text: &str) -> Option<i64> {
    let rest = text.strip_prefix("t=")?;
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The report as printed, with the command that reproduces it.
pub fn format_report(report: &BenchReport, options: &BenchOptions) -> String {
    let mut out = String::new();
    let journal = report.journal.describe();
    let _ = writeln!(
        out,
        "zoomwire bench: daemon pid {} ({} build), journal {journal}, 20 rules, {:.0}% of events post to Slack",
        report.pid,
        if cfg!(debug_assertions) {
            "DEBUG"
        } else {
            "release"
        },
        workload::POST_SHARE * 100.0
    );
    if let Some(t) = &report.throughput {
        let rate = t
            .events_per_second()
            .map(|r| format!("{r:.0} events/s"))
            .unwrap_or_else(|| "did not finish".into());
        let elapsed = t
            .elapsed
            .map(|e| format!("{:.3} s", e.as_secs_f64()))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "  throughput  {rate}: {} events processed in {elapsed} (frames taken by the WebSocket in {:.3} s), {} Slack posts",
            t.events,
            t.sending.as_secs_f64(),
            t.posts
        );
    }
    if let Some(l) = &report.latency {
        let ms = |p: f64| {
            l.percentile_ms(p)
                .map(|v| format!("{v:.2} ms"))
                .unwrap_or_else(|| "-".into())
        };
        let _ = writeln!(
            out,
            "  latency     frame sent -> Slack post received at {} events/s: p50 {}, p90 {}, p99 {}, max {} ({} of {} posts)",
            l.rate,
            ms(50.0),
            ms(90.0),
            ms(99.0),
            ms(100.0),
            l.micros.len(),
            l.posts_expected
        );
    }
    let mib = |m: &Option<Memory>| {
        m.map(|m| format!("{:.1} MiB", m.peak_kib as f64 / 1024.0))
            .unwrap_or_else(|| "-".into())
    };
    let _ = writeln!(
        out,
        "  memory      daemon peak RSS (VmHWM): {} in the throughput phase, {} in the latency phase; RSS at the end {}",
        mib(&report.memory_throughput),
        mib(&report.memory_latency),
        report
            .memory_latency
            .map(|m| format!("{:.1} MiB", m.now_kib as f64 / 1024.0))
            .unwrap_or_else(|| "-".into())
    );
    let runs: Vec<String> = report
        .runs
        .iter()
        .map(|(outcome, n)| format!("{n:.0} {outcome}"))
        .collect();
    let _ = writeln!(
        out,
        "  daemon      {:.0} events counted, runs: {}",
        report.events_counted,
        if runs.is_empty() {
            "none".into()
        } else {
            runs.join(", ")
        }
    );
    let _ = writeln!(
        out,
        "  command     zoomwire bench --events {} --rate {} --seconds {} --journal {}",
        options.events,
        options.rate,
        options.duration.as_secs(),
        options.journal.flag()
    );
    out
}

/// Whether the bench saw everything it expected.
pub fn complete(report: &BenchReport) -> bool {
    let throughput = report
        .throughput
        .as_ref()
        .is_some_and(|t| t.elapsed.is_some());
    let latency = report
        .latency
        .as_ref()
        .is_some_and(|l| l.micros.len() == l.posts_expected);
    throughput && latency
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_send_time_is_read_from_the_message() {
        assert_eq!(
            sent_time("t=1732000000123456 outside-participant-joined: x"),
            Some(1_732_000_000_123_456)
        );
        assert_eq!(sent_time("hello"), None);
    }
}
