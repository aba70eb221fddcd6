//! The disk under the durable journal: what `fdatasync` costs, and how the
//! journal's own commits fared in the latency phase.
//!
//! The build machine's disk mostly syncs a 4 KiB append in a quarter of a
//! millisecond, but now and then (every few seconds to minutes) one sync
//! takes 15 to 100 ms, whoever writes: a bare loop of appends and syncs
//! meets them too. A few hundred samples in a quiet moment rarely do, so the
//! probe runs for as long as the latency phase, and reports its slowest
//! sync and the count of stalls. Every post behind a stalled commit waits
//! for it: one stall in the phase can be the p99 on its own. The journal's
//! commits over the phase come from its `zoomwire_journal_commit_seconds`
//! histogram on `/metrics` (the SQLite journals have it), read before and
//! after, so the report says whether the durable latency met a stall.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use super::percentile;
use super::process::counter_by;

/// A sync slower than this is a stall.
pub const STALL: Duration = Duration::from_millis(10);

/// The bucket bounds of the commit histogram, by their `le` label.
const COMMIT_BUCKETS: &str = "zoomwire_journal_commit_seconds_bucket";

/// The disk's `fdatasync` after a 4 KiB append, in microseconds, sorted.
#[derive(Debug, Clone, Default)]
pub struct Fsync {
    pub micros: Vec<i64>,
    /// How long the probe ran.
    pub span: Duration,
}

impl Fsync {
    pub fn percentile_ms(&self, p: f64) -> Option<f64> {
        percentile(&self.micros, p).map(|us| us as f64 / 1000.0)
    }

    /// Syncs slower than [`STALL`].
    pub fn stalls(&self) -> usize {
        let stall = STALL.as_micros() as i64;
        self.micros.iter().filter(|&&us| us > stall).count()
    }
}

/// Appends 4 KiB and syncs it, again and again for `span` (at least once),
/// in `dir`.
pub fn measure_fsync(dir: &Path, span: Duration) -> std::io::Result<Fsync> {
    use std::io::Write as _;
    let path = dir.join("fsync-probe");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let block = [0x5au8; 4096];
    let mut micros = Vec::new();
    let started = Instant::now();
    while micros.is_empty() || started.elapsed() < span {
        let at = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        micros.push(at.elapsed().as_micros() as i64);
    }
    let span = started.elapsed();
    drop(file);
    std::fs::remove_file(path)?;
    micros.sort_unstable();
    Ok(Fsync { micros, span })
}

/// The journal's commits over a phase, from its histogram read before and
/// after.
#[derive(Debug, Clone, PartialEq)]
pub struct Commits {
    pub count: u64,
    /// Commits slower than [`STALL`].
    pub stalls: u64,
    /// The histogram bound the slowest commit was under (`None`: past the
    /// last bound).
    pub slowest_under: Option<Duration>,
}

/// The cumulative bucket counts of the commit histogram, by bound in
/// seconds (`+Inf` as infinity), summed over the `/metrics` texts given.
pub fn commit_buckets(metrics: &[String]) -> BTreeMap<u64, f64> {
    let mut buckets = BTreeMap::new();
    for text in metrics {
        for (le, count) in counter_by(text, COMMIT_BUCKETS, Some("le")) {
            let Ok(bound) = le.parse::<f64>() else {
                continue;
            };
            *buckets.entry(bound.to_bits()).or_insert(0.0) += count;
        }
    }
    buckets
}

impl Commits {
    /// What the histogram gained between `before` and `after`
    /// ([`commit_buckets`]); `None` when the journal has no such histogram.
    pub fn between(before: &BTreeMap<u64, f64>, after: &BTreeMap<u64, f64>) -> Option<Commits> {
        let mut gained: Vec<(f64, u64)> = after
            .iter()
            .map(|(bits, count)| {
                let was = before.get(bits).copied().unwrap_or(0.0);
                (f64::from_bits(*bits), (count - was).max(0.0) as u64)
            })
            .collect();
        gained.sort_by(|a, b| a.0.total_cmp(&b.0));
        let &(_, count) = gained.last()?;
        let within_stall = gained
            .iter()
            .find(|(bound, _)| *bound >= STALL.as_secs_f64())
            .map_or(0, |&(_, n)| n);
        // With no commit every bucket holds "all" of them: no slowest then.
        let slowest_under = gained
            .iter()
            .find(|&&(_, n)| n == count && count > 0)
            .map(|&(bound, _)| bound)
            .filter(|bound| bound.is_finite())
            .map(Duration::from_secs_f64);
        Some(Commits {
            count,
            stalls: count - within_stall.min(count),
            slowest_under,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disk_is_measured_for_the_span_asked() {
        let dir = tempfile::tempdir().unwrap();
        let fsync = measure_fsync(dir.path(), Duration::from_millis(30)).unwrap();
        assert!(fsync.span >= Duration::from_millis(30), "{:?}", fsync.span);
        assert!(!fsync.micros.is_empty());
        assert!(fsync.percentile_ms(99.0).unwrap() > 0.0);
        // A zero span still syncs once.
        let once = measure_fsync(dir.path(), Duration::ZERO).unwrap();
        assert_eq!(once.micros.len(), 1);
    }

    #[test]
    fn stalls_are_syncs_slower_than_ten_milliseconds() {
        let fsync = Fsync {
            micros: vec![200, 250, 10_000, 10_001, 48_000],
            span: Duration::from_secs(1),
        };
        assert_eq!(fsync.stalls(), 2);
    }

    fn metrics(buckets: &[(&str, u64)]) -> String {
        buckets
            .iter()
            .map(|(le, n)| format!("{COMMIT_BUCKETS}{{le=\"{le}\"}} {n}\n"))
            .collect()
    }

    #[test]
    fn commits_of_a_phase_are_what_the_histogram_gained() {
        let before = commit_buckets(&[metrics(&[
            ("0.005", 90),
            ("0.01", 95),
            ("0.025", 98),
            ("0.05", 100),
            ("+Inf", 100),
        ])]);
        let after = commit_buckets(&[metrics(&[
            ("0.005", 1080),
            ("0.01", 1090),
            ("0.025", 1097),
            ("0.05", 1099),
            ("+Inf", 1100),
        ])]);
        // 1,000 commits: 995 within 10 ms, the slowest past 50 ms (the last bound).
        assert_eq!(
            Commits::between(&before, &after),
            Some(Commits {
                count: 1000,
                stalls: 5,
                slowest_under: None,
            })
        );
        let calm = commit_buckets(&[metrics(&[
            ("0.005", 1085),
            ("0.01", 1095),
            ("0.025", 1098),
            ("0.05", 1100),
            ("+Inf", 1100),
        ])]);
        let commits = Commits::between(&before, &calm).unwrap();
        assert_eq!(commits.stalls, 0);
        assert_eq!(commits.slowest_under, Some(Duration::from_millis(10)));
    }

    #[test]
    fn a_phase_without_commits_has_no_slowest() {
        let buckets = commit_buckets(&[metrics(&[("0.005", 7), ("+Inf", 7)])]);
        let none = Commits::between(&buckets, &buckets).unwrap();
        assert_eq!((none.count, none.stalls, none.slowest_under), (0, 0, None));
    }

    #[test]
    fn a_journal_without_the_histogram_has_no_commits() {
        let none = commit_buckets(&["zoomwire_events_total 5\n".to_string()]);
        assert_eq!(Commits::between(&none, &none), None);
    }
}
