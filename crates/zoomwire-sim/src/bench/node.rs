//! The hand-written Node.js client of `bench/node/` (`--journal node`): what
//! an integrator writes from Zoom's samples, with the bench's 20 rules in
//! JavaScript and no journal. The bench runs it in place of the daemon, on
//! the same workload and with the same checks, so that zoomwire's events/s
//! can be read against it from one run ([`comparison`]).
//!
//! The client serves the two counters the bench reads under zoomwire's names
//! (`zoomwire_events_total`, `zoomwire_runs_total`) at `ZOOMWIRE_ADMIN_ADDR`,
//! so the bench tells when it has processed everything as it does for the
//! daemon.

use std::ffi::OsString;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{BenchJournal, BenchReport, Latency};

/// The client's folder, relative to the working directory, unless
/// `--node-client` says otherwise.
pub const DEFAULT_DIR: &str = "bench/node";
/// Its entry point, in that folder.
const SCRIPT: &str = "client.js";

/// Why the Node client cannot run.
#[derive(Debug, thiserror::Error)]
pub enum NodeClientError {
    #[error("`node` did not run ({0}); install Node.js 20 or later")]
    NoNode(String),
    #[error("no {SCRIPT} in {0}: pass the bench/node folder with --node-client")]
    NoScript(PathBuf),
    #[error("{0} has no node_modules/ws: run `npm ci` in it first")]
    NotInstalled(PathBuf),
}

/// A Node client ready to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeClient {
    /// `node --version`, for the report.
    pub version: String,
    /// Its `client.js`, absolute.
    pub script: PathBuf,
}

impl NodeClient {
    /// Checks that `node` runs and that `dir` holds the client with its
    /// packages installed.
    pub fn find(dir: &Path) -> Result<NodeClient, NodeClientError> {
        let script = std::path::absolute(dir.join(SCRIPT))
            .map_err(|_| NodeClientError::NoScript(dir.to_path_buf()))?;
        if !script.is_file() {
            return Err(NodeClientError::NoScript(dir.to_path_buf()));
        }
        if !dir.join("node_modules").join("ws").is_dir() {
            return Err(NodeClientError::NotInstalled(dir.to_path_buf()));
        }
        let output = Command::new("node")
            .arg("--version")
            .output()
            .map_err(|e| NodeClientError::NoNode(e.to_string()))?;
        if !output.status.success() {
            return Err(NodeClientError::NoNode(output.status.to_string()));
        }
        let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
        Ok(NodeClient { version, script })
    }

    /// The command line that starts it; `node` is looked up in the `PATH`
    /// given to it ([`Self::path_var`]).
    pub fn argv(&self) -> Vec<OsString> {
        vec!["node".into(), self.script.clone().into()]
    }

    /// The bench's `PATH`, which the client's otherwise empty environment
    /// keeps so that `node` is found.
    pub fn path_var() -> Option<(String, String)> {
        std::env::var("PATH").ok().map(|path| ("PATH".into(), path))
    }
}

/// zoomwire's throughput phase against the Node client's, for each journal
/// run besides it: events/s (zoomwire's over node's: higher is better for
/// zoomwire) and CPU per event (node's over zoomwire's, likewise), in the
/// burst and at the latency phase's steady rate; `None` without a finished
/// Node run and a finished zoomwire run.
pub fn comparison(report: &BenchReport) -> Option<String> {
    let figures = |journal: BenchJournal| {
        let run = report.journals.iter().find(|j| j.journal == journal)?;
        let t = run.throughput.as_ref()?;
        let steady = run.latency.as_ref().and_then(Latency::cpu_micros_per_event);
        Some((t.events_per_second()?, t.cpu_micros_per_event(), steady))
    };
    let (node_rate, node_cpu, node_steady) = figures(BenchJournal::Node)?;
    let (mut rates, mut cpus, mut steadies) = (String::new(), String::new(), String::new());
    for journal in report.journals.iter().map(|j| j.journal) {
        if journal == BenchJournal::Node {
            continue;
        }
        let Some((rate, cpu, steady)) = figures(journal) else {
            continue;
        };
        add_ratio(&mut rates, journal, Some(rate / node_rate));
        add_ratio(&mut cpus, journal, node_cpu.zip(cpu).map(|(n, z)| n / z));
        add_ratio(
            &mut steadies,
            journal,
            node_steady.zip(steady).map(|(n, z)| n / z),
        );
    }
    if rates.is_empty() {
        return None;
    }
    let mut text = format!("zoomwire/node events/s: {rates}");
    if !cpus.is_empty() {
        let _ = write!(text, "\n  node/zoomwire CPU per event: {cpus}");
    }
    if !steadies.is_empty() {
        let _ = write!(
            text,
            "\n  node/zoomwire CPU per event at the steady rate: {steadies}"
        );
    }
    Some(text)
}

/// Appends "journal: ratio" to a "; "-separated list, when there is a ratio.
fn add_ratio(list: &mut String, journal: BenchJournal, ratio: Option<f64>) {
    if let Some(ratio) = ratio {
        let sep = if list.is_empty() { "" } else { "; " };
        let _ = write!(list, "{sep}{}: {ratio:.2}x", journal.flag());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bench::{JournalReport, Throughput};

    fn run(journal: BenchJournal, events: usize, cpu_ms: u64) -> JournalReport {
        JournalReport {
            journal,
            latency: Some(Latency {
                events: 10_000,
                cpu: Some(Duration::from_millis(cpu_ms / 2)),
                ..Latency::default()
            }),
            throughput: Some(Throughput {
                events,
                elapsed: Some(Duration::from_secs(1)),
                cpu: Some(Duration::from_millis(cpu_ms)),
                ..Throughput::default()
            }),
            ..JournalReport::default()
        }
    }

    #[test]
    fn the_comparison_divides_each_journal_by_node() {
        let report = BenchReport {
            fsync: None,
            journals: vec![
                run(BenchJournal::Full, 90_000, 2_700),
                run(BenchJournal::Memory, 100_000, 1_200),
                run(BenchJournal::Node, 40_000, 1_440),
            ],
        };
        // CPU per event: node 36 µs, full 30 µs, memory 12 µs; at the
        // steady rate node 72 µs, full 135 µs, memory 60 µs.
        assert_eq!(
            comparison(&report).as_deref(),
            Some(
                "zoomwire/node events/s: full: 2.25x; memory: 2.50x\n  \
                 node/zoomwire CPU per event: full: 1.20x; memory: 3.00x\n  \
                 node/zoomwire CPU per event at the steady rate: full: 0.53x; memory: 1.20x"
            )
        );
    }

    #[test]
    fn no_comparison_without_both_sides_finished() {
        let alone = BenchReport {
            fsync: None,
            journals: vec![run(BenchJournal::Node, 40_000, 1_440)],
        };
        assert_eq!(comparison(&alone), None);
        let mut unfinished = run(BenchJournal::Node, 40_000, 1_440);
        unfinished.throughput.as_mut().unwrap().elapsed = None;
        let report = BenchReport {
            fsync: None,
            journals: vec![run(BenchJournal::Full, 90_000, 2_700), unfinished],
        };
        assert_eq!(comparison(&report), None);
    }

    #[test]
    fn the_client_folder_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            NodeClient::find(dir.path()),
            Err(NodeClientError::NoScript(_))
        ));
        std::fs::write(dir.path().join(SCRIPT), "").unwrap();
        let missing = NodeClient::find(dir.path()).unwrap_err();
        assert!(matches!(missing, NodeClientError::NotInstalled(_)));
        assert!(missing.to_string().contains("npm ci"), "{missing}");
    }
}
