//! Drives the real `zoomwire` binary as a daemon, as an operator would run
//! it, against the simulator hosted in the test process: a [`Workspace`]
//! holds the simulator and temporary `data/`, `rules/` and `scripts/`
//! folders, builds the child's environment from scratch (the simulator's
//! settings, the folders, free loopback ports, a short shutdown grace, JSON
//! logs) and starts [`Daemon`]s on it. The daemon's log lines are collected
//! as they come, so tests wait on what it says instead of sleeping.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use zoomwire_sim::sim::{self, SimConfig, SimHandle};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_zoomwire");

/// How long a daemon may take to say it is running (a debug build on a busy machine).
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Generous bound for anything the tests wait on; a pass takes far less.
pub const WAIT: Duration = Duration::from_secs(15);

/// A simulator and the folders one daemon installation uses.
pub struct Workspace {
    pub sim: SimHandle,
    dir: tempfile::TempDir,
    /// Settings added to (or replacing) the defaults of every command.
    pub env: Vec<(String, String)>,
}

impl Workspace {
    pub async fn new() -> Workspace {
        Workspace::with_sim(SimConfig::default()).await
    }

    pub async fn with_sim(config: SimConfig) -> Workspace {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let sim = sim::start(config).await.expect("the simulator starts");
        let dir = tempfile::tempdir().expect("temp dir");
        for folder in ["data", "rules", "scripts"] {
            std::fs::create_dir_all(dir.path().join(folder)).expect("folder");
        }
        Workspace {
            sim,
            dir,
            env: Vec::new(),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn rules_dir(&self) -> PathBuf {
        self.dir.path().join("rules")
    }

    /// Writes `rules/<file>`.
    pub fn write_rule(&self, file: &str, yaml: &str) {
        std::fs::write(self.rules_dir().join(file), yaml).expect("rule written");
    }

    /// Sets (or replaces) one variable for every later command.
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.to_string(), value.to_string()));
    }

    /// Removes one variable, default or added, from every later command.
    pub fn unset_env(&mut self, name: &str) {
        self.set_env(name, "");
    }

    /// The child's whole environment: the simulator's settings, the folders,
    /// free ports, a short grace, JSON logs, then [`Workspace::env`].
    pub fn environment(&self) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = self
            .sim
            .env_lines()
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        vars.extend([
            ("ZOOMWIRE_DATA".into(), path(self.data_dir())),
            ("ZOOMWIRE_RULES".into(), path(self.rules_dir())),
            ("ZOOMWIRE_SCRIPTS".into(), path(self.root().join("scripts"))),
            ("ZOOMWIRE_ADMIN_ADDR".into(), "127.0.0.1:0".into()),
            ("ZOOMWIRE_SHUTDOWN_GRACE".into(), "3s".into()),
            ("ZOOMWIRE_LOG_FORMAT".into(), "json".into()),
            ("RUST_LOG".into(), "info".into()),
        ]);
        for (name, value) in &self.env {
            vars.retain(|(n, _)| n != name);
            if !value.is_empty() {
                vars.push((name.clone(), value.clone()));
            }
        }
        vars
    }

    /// `zoomwire ARGS` with exactly [`Workspace::environment`], run in the
    /// workspace (so no `.env` or `zoomwire.yaml` of the repository is read).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env_clear()
            .envs(self.environment())
            .current_dir(self.root())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Runs a command to its end.
    pub async fn zoomwire(&self, args: &[&str]) -> std::process::Output {
        self.command(args).output().await.expect("the binary runs")
    }

    /// `zoomwire runs --json`: every run in the store, newest first.
    pub async fn runs(&self) -> Vec<Value> {
        self.runs_with(&[]).await
    }

    /// `zoomwire runs --json ARGS`.
    pub async fn runs_with(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["runs", "--json"];
        all.extend_from_slice(args);
        let output = self.zoomwire(&all).await;
        assert!(
            output.status.success(),
            "zoomwire runs failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).expect("one JSON run per line"))
            .collect()
    }

    /// Starts `zoomwire run` without waiting for it.
    pub fn spawn(&self) -> Daemon {
        self.spawn_with(&[])
    }

    /// Starts `zoomwire run ARGS` without waiting for it.
    pub fn spawn_with(&self, args: &[&str]) -> Daemon {
        self.spawn_command(args, &[])
    }

    /// Starts `zoomwire run` with these variables added (one daemon of several).
    pub fn spawn_with_env(&self, vars: &[(&str, &str)]) -> Daemon {
        self.spawn_command(&[], vars)
    }

    fn spawn_command(&self, args: &[&str], vars: &[(&str, &str)]) -> Daemon {
        let mut command = vec!["run"];
        command.extend_from_slice(args);
        let mut command = self.command(&command);
        command.envs(vars.iter().copied());
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the daemon starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = tokio::spawn(collect_lines(stderr, lines.clone()));
        Daemon {
            child,
            lines,
            reader: Some(reader),
            admin: None,
        }
    }

    /// Starts `zoomwire run` and waits until it says it is running and its
    /// WebSocket connection number `connections` (counting earlier daemons')
    /// is open at the simulator.
    pub async fn start(&self, connections: usize) -> Daemon {
        self.start_with(&[], connections).await
    }

    /// As [`Workspace::start`], for `zoomwire run ARGS`.
    pub async fn start_with(&self, args: &[&str], connections: usize) -> Daemon {
        let mut daemon = self.spawn_with(args);
        daemon.wait_running().await;
        let subscription = self.sim.subscription_id().to_string();
        assert!(
            self.sim
                .wait_for_connections(&subscription, connections, WAIT)
                .await,
            "the daemon did not connect to the simulator's WebSocket:\n{}",
            daemon.stderr()
        );
        daemon
    }

    /// Slack posts the simulator accepted in `channel`, texts in order.
    pub fn slack_texts(&self, channel: &str) -> Vec<String> {
        self.sim
            .slack_posts()
            .into_iter()
            .filter(|post| post.channel.as_deref() == Some(channel))
            .map(|post| post.text.unwrap_or_default())
            .collect()
    }

    /// Requests the simulator answered, as `METHOD /raw/path`.
    pub fn answered(&self, prefix: &str) -> Vec<String> {
        self.sim
            .requests()
            .into_iter()
            .filter(|r| r.raw_path.starts_with(prefix))
            .map(|r| format!("{} {}", r.method, r.raw_path))
            .collect()
    }
}

/// Keeps every line the child writes to standard error.
async fn collect_lines(stderr: tokio::process::ChildStderr, lines: Arc<Mutex<Vec<String>>>) {
    let mut reader = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = reader.next_line().await {
        lines.lock().unwrap().push(line);
    }
}

/// A `zoomwire run` child process.
pub struct Daemon {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<tokio::task::JoinHandle<()>>,
    /// The admin API's address, once the daemon said it is running.
    pub admin: Option<SocketAddr>,
}

impl Daemon {
    /// Everything written to standard error so far.
    pub fn stderr(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The JSON log lines so far.
    pub fn logs(&self) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Log lines whose message is `message`.
    pub fn logged(&self, message: &str) -> Vec<Value> {
        self.logs()
            .into_iter()
            .filter(|line| line["message"] == message)
            .collect()
    }

    /// Waits for the "zoomwire is running" line and notes the admin address.
    pub async fn wait_running(&mut self) -> SocketAddr {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(line) = self.logged("zoomwire is running").first() {
                let admin: SocketAddr = line["admin"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .expect("the admin address is logged");
                self.admin = Some(admin);
                return admin;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.finish_reading().await;
                panic!(
                    "the daemon exited ({status}) before running:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not start in {START_TIMEOUT:?}:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until a log line with `message` has been written.
    pub async fn wait_for_log(&self, message: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = self.logged(message).into_iter().next() {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon never logged `{message}`:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the daemon is still running")
    }

    /// SIGKILL, as `kill -9` would: no shutdown code runs.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("SIGKILL delivered");
        self.finish_reading().await;
    }

    /// SIGTERM, as a service manager stops it.
    pub async fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .await
            .expect("kill runs");
        assert!(status.success(), "SIGTERM delivered");
    }

    /// Waits for the process to end by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => {
                let status = status.expect("wait works");
                self.finish_reading().await;
                status
            }
            Err(_) => panic!(
                "the daemon did not exit within {timeout:?}:\n{}",
                self.stderr()
            ),
        }
    }

    /// Reads the rest of standard error after the process ended.
    async fn finish_reading(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
    }

    /// GET on the admin API, as JSON.
    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        let admin = self.admin.expect("the daemon is running");
        let response = reqwest::Client::new()
            .get(format!("http://{admin}{path}"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("the admin API answers");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// Polls `check` every 20 ms until it returns `Some`, for at most [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Zoom event body as the simulator sends it.
pub fn meeting_event(kind: &str, n: u64, host_id: &str) -> Value {
    serde_json::json!({
        "event": kind,
        "event_ts": 1_732_030_000_000u64 + n,
        "payload": {
            "account_id": "sim-account",
            "object": {
                "id": 85_512_345_678u64,
                "uuid": format!("crash-{n}=="),
                "host_id": host_id,
                "topic": format!("Meeting {n}"),
            }
        }
    })
}

/// The runs of one rule, oldest first.
pub fn runs_of<'a>(runs: &'a [Value], rule: &str) -> Vec<&'a Value> {
    let mut runs: Vec<&Value> = runs.iter().filter(|r| r["rule"] == rule).collect();
    runs.reverse();
    runs
}
