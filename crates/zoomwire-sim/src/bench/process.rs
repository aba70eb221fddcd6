//! The daemon under test as a separate process: `zoomwire run` (this same
//! executable) with its settings in the environment, so that its memory is
//! its own. The bench reads its peak memory from `/proc/<pid>/status`, its
//! counters from the admin API's `/metrics`, and kills it at the end.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `zoomwire run`.
pub struct DaemonProcess {
    child: Child,
    admin: SocketAddr,
    log: PathBuf,
    http: reqwest::Client,
}

/// Memory figures of a process, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// Peak resident set size (`VmHWM`).
    pub peak_kib: u64,
    /// Resident set size now (`VmRSS`).
    pub now_kib: u64,
}

impl DaemonProcess {
    /// Starts `argv` (`exe run`, or the Node client) in `dir` with exactly
    /// `env` (nothing inherited, so no stray `.env` or `ZOOMWIRE_*` of the
    /// caller applies); its logs go to `dir/<log_name>`.
    pub fn spawn(
        argv: &[OsString],
        dir: &Path,
        env: &BTreeMap<String, String>,
        admin: SocketAddr,
        log_name: &str,
    ) -> std::io::Result<DaemonProcess> {
        let log = dir.join(log_name);
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| std::io::Error::other("no command to start"))?;
        let child = Command::new(program)
            .args(args)
            .current_dir(dir)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(DaemonProcess {
            child,
            admin,
            log,
            http,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has ended (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Its memory now, from `/proc/<pid>/status`.
    pub fn memory(&self) -> Option<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        parse_status(&status)
    }

    /// CPU time it has used so far, user and system, over all its threads
    /// (`/proc/<pid>/stat`, in clock ticks of 10 ms: Linux's `USER_HZ` is 100).
    pub fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        parse_cpu_ticks(&stat).map(|ticks| Duration::from_millis(ticks * 10))
    }

    /// Time on the CPU of each of its threads so far, by thread id
    /// (`/proc/<pid>/task/*/schedstat`, in nanoseconds). Empty where the
    /// kernel does not keep the figure.
    pub fn thread_cpu(&self) -> ThreadCpu {
        DaemonProcess::thread_cpu_of(self.pid())
    }

    fn thread_cpu_of(pid: u32) -> ThreadCpu {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return ThreadCpu::default();
        };
        let threads = tasks
            .flatten()
            .filter_map(|task| {
                let tid = task.file_name().to_str()?.parse::<u32>().ok()?;
                let name = std::fs::read_to_string(task.path().join("comm")).ok()?;
                let schedstat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
                let nanos = schedstat.split_whitespace().next()?.parse().ok()?;
                Some((
                    tid,
                    (name.trim_end().to_string(), Duration::from_nanos(nanos)),
                ))
            })
            .collect();
        ThreadCpu(threads)
    }

    /// Resets the peak (`VmHWM`) to the current RSS, so the next reading is
    /// the peak of what follows. False where the kernel does not allow it.
    pub fn reset_peak(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").is_ok()
    }

    /// The admin API's `/metrics` text.
    pub async fn metrics(&self) -> Option<String> {
        let url = format!("http://{}/metrics", self.admin);
        let response = self.http.get(url).send().await.ok()?;
        response.text().await.ok()
    }

    /// The admin API's `/healthz` answer, whatever its status.
    pub async fn health(&self) -> Option<serde_json::Value> {
        let url = format!("http://{}/healthz", self.admin);
        let response = self.http.get(url).send().await.ok()?;
        response.json().await.ok()
    }

    /// Whether its `/healthz` says it holds the lease of the account's
    /// (default) subscription.
    pub async fn holds_subscription(&self) -> bool {
        self.health()
            .await
            .is_some_and(|health| health["cluster"]["leases"]["subscription:default"].is_i64())
    }

    /// Kills the process and waits for it (`SIGKILL`: as `kill -9`).
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Time on the CPU of a process's threads at one moment, by thread id.
#[derive(Debug, Clone, Default)]
pub struct ThreadCpu(BTreeMap<u32, (String, Duration)>);

impl ThreadCpu {
    /// The time each kind of thread spent between `before` and this
    /// reading, by thread name without its number (`zoomwire-script-7`
    /// counts as `zoomwire-script`). A thread started since counts whole;
    /// one that ended since is not counted.
    pub fn since(&self, before: &ThreadCpu) -> BTreeMap<String, Duration> {
        let mut by_kind = BTreeMap::new();
        for (tid, (name, now)) in &self.0 {
            let earlier = before
                .0
                .get(tid)
                .filter(|(earlier_name, _)| earlier_name == name)
                .map_or(Duration::ZERO, |(_, at)| *at);
            *by_kind.entry(thread_kind(name).to_string()).or_default() +=
                now.saturating_sub(earlier);
        }
        by_kind
    }

    /// Both readings together (the threads of several processes).
    pub fn merge(mut self, other: ThreadCpu) -> ThreadCpu {
        self.0.extend(other.0);
        self
    }
}

/// A thread's name without its number: `zoomwire-script-12` -> `zoomwire-script`.
fn thread_kind(name: &str) -> &str {
    match name.rsplit_once('-') {
        Some((kind, number))
            if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) =>
        {
            kind
        }
        _ => name,
    }
}

fn parse_status(status: &str) -> Option<Memory> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some(Memory {
        peak_kib: field("VmHWM:")?,
        now_kib: field("VmRSS:")?,
    })
}

/// `utime + stime` from a `/proc/<pid>/stat` line, in clock ticks.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name, in parentheses, may hold spaces: fields count from after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the line are the 12th and 13th after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The sum of a counter over all its label sets, from Prometheus text.
pub fn counter_sum(metrics: &str, name: &str) -> f64 {
    counter_by(metrics, name, None).values().sum()
}

/// A counter's values by one label (all under `""` when `label` is `None`).
pub fn counter_by(metrics: &str, name: &str, label: Option<&str>) -> BTreeMap<String, f64> {
    let mut values = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(rest) => match rest.split_once('}') {
                Some((labels, value)) => (labels, value),
                None => continue,
            },
            None if rest.starts_with(' ') => ("", rest),
            None => continue,
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let key = label
            .and_then(|label| label_value(labels, label))
            .unwrap_or_default();
        *values.entry(key).or_insert(0.0) += value;
    }
    values
}

fn label_value(labels: &str, name: &str) -> Option<String> {
    labels.split(',').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key.trim() == name).then(|| value.trim().trim_matches('"').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_read_from_proc_status() {
        let status =
            "Name:\tzoomwire\nVmPeak:\t  900000 kB\nVmHWM:\t   23456 kB\nVmRSS:\t   20000 kB\n";
        assert_eq!(
            parse_status(status),
            Some(Memory {
                peak_kib: 23456,
                now_kib: 20000
            })
        );
        assert_eq!(parse_status("Name: x\n"), None);
    }

    #[test]
    fn cpu_time_is_read_from_proc_stat() {
        let stat = "4242 (zoomwire run) S 1 4242 4242 0 -1 4194560 900 0 0 0 150 25 0 0 20 0 40 0 1000 100000 2000";
        assert_eq!(parse_cpu_ticks(stat), Some(175));
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_cpu_ticks(&own).is_some(), "{own}");
    }

    #[test]
    fn thread_time_is_split_by_kind_of_thread() {
        let at = |threads: &[(u32, &str, u64)]| {
            ThreadCpu(
                threads
                    .iter()
                    .map(|&(tid, name, ms)| (tid, (name.to_string(), Duration::from_millis(ms))))
                    .collect(),
            )
        };
        let before = at(&[
            (1, "zoomwire", 5),
            (2, "tokio-rt-worker", 100),
            (3, "zoomwire-script-0", 10),
            (9, "gone", 50),
        ]);
        let after = at(&[
            (1, "zoomwire", 5),
            (2, "tokio-rt-worker", 160),
            (3, "zoomwire-script-0", 30),
            (4, "zoomwire-script-1", 15),
            (5, "zoomwire-writer", 40),
        ]);
        let split = after.since(&before);
        let ms = |kind: &str| split[kind].as_millis();
        assert_eq!(ms("tokio-rt-worker"), 60);
        assert_eq!(
            ms("zoomwire-script"),
            35,
            "thread 1 started since: counted whole"
        );
        assert_eq!(ms("zoomwire-writer"), 40);
        assert_eq!(ms("zoomwire"), 0);
        assert!(
            !split.contains_key("gone"),
            "an ended thread is not counted"
        );
        assert_eq!(thread_kind("node"), "node");
        assert_eq!(thread_kind("tokio-rt-worker"), "tokio-rt-worker");
        assert_eq!(thread_kind("x-"), "x-");
    }

    #[test]
    fn this_process_threads_are_read() {
        let me = DaemonProcess::thread_cpu_of(std::process::id());
        let split = me.since(&ThreadCpu::default());
        assert!(!split.is_empty(), "no thread of the test process was read");
    }

    #[test]
    fn counters_are_summed_and_split_by_label() {
        let text = "# TYPE zoomwire_events_total counter\n\
            zoomwire_events_total{type=\"meeting.started\"} 10\n\
            zoomwire_events_total{type=\"meeting.ended\"} 5\n\
            zoomwire_events_total_other 99\n\
            zoomwire_runs_total{rule=\"a\",outcome=\"succeeded\"} 3\n\
            zoomwire_runs_total{rule=\"b\",outcome=\"succeeded\"} 4\n\
            zoomwire_runs_total{rule=\"b\",outcome=\"failed\"} 1\n";
        assert_eq!(counter_sum(text, "zoomwire_events_total"), 15.0);
        let runs = counter_by(text, "zoomwire_runs_total", Some("outcome"));
        assert_eq!(runs["succeeded"], 7.0);
        assert_eq!(runs["failed"], 1.0);
    }
}
