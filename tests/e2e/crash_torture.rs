//! Crash torture: the real `zoomwire` binary killed with SIGKILL at random
//! points under a paced stream of events, restarted each time on the same
//! store, then checked from the store itself (a real SQLite file) and from
//! the simulator's Slack, which counts every post it accepts.
//!
//! Every event makes six Slack posts: three by a rule that does not mark
//! `slack.post` idempotent (`once`) and three by one that does (`again`).
//! Posts are slowed down a little at the simulator so that kills often
//! land while one is in flight. After the last restart the test asserts:
//! - no accepted event (in the store) lacks its runs, one per rule;
//! - every run completed: `again` runs succeeded; `once` runs succeeded or,
//!   when a kill left one of their posts in doubt, went to the dead letters
//!   naming it;
//! - a `once` post was made at most once; an `again` post at most twice,
//!   and twice only where its record says `in_doubt` (the one in flight at a
//!   kill); a succeeded run made each of its posts; a dead one made none
//!   after the post in doubt.
//!
//! Also with a full disk mid-stream (the store on a small tmpfs that the
//! test fills up, then frees: the tests run as root), killed while it is
//! full, and the store left by each killed writer is checked whole. A run
//! whose end could not be written while the disk was full is written again
//! by the daemon that ran it, never resumed by that daemon as a stranger's.
//!
//! The seed of the random kill points is printed; `TORTURE_SEED=N` replays it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::daemon::{Daemon, Workspace, meeting_event};
use rusqlite::{Connection, OpenFlags};
use zoomwire_sim::sim::SimConfig;
use zoomwire_sim::sim::data::HOST_USER_ID;

const KILLS: usize = 25;
/// Time between two events of the stream.
const PACE: Duration = Duration::from_millis(15);
/// How long each Slack post takes at the simulator.
const POST_DELAY: Duration = Duration::from_millis(15);
const POSTS: [&str; 3] = ["a", "b", "c"];

fn rule(name: &str, idempotent: bool) -> String {
    let idempotent = if idempotent {
        "idempotent: [slack.post]\n"
    } else {
        ""
    };
    format!(
        r##"name: {name}
on: meeting.started
allow: [slack]
{idempotent}max_runs: 50
timeout: 60s
retry: {{ attempts: 20, backoff: 200ms, max_backoff: 1s }}
do: |
  let topic = event.payload.object.topic;
  slack::post("#{name}", `${{topic}} a`);
  slack::post("#{name}", `${{topic}} b`);
  slack::post("#{name}", `${{topic}} c`);
"##
    )
}

async fn workspace() -> Arc<Workspace> {
    let mut sim = SimConfig::default();
    sim.slack_channels
        .extend(["once".to_string(), "again".to_string()]);
    let ws = Workspace::with_sim(sim).await;
    ws.write_rule("once.yaml", &rule("once", false));
    ws.write_rule("again.yaml", &rule("again", true));
    ws.sim.set_delay("/slack/api/chat.postMessage", POST_DELAY);
    Arc::new(ws)
}

/// Emits `meeting.started` number 1, 2, ... every [`PACE`] until stopped;
/// counts those the simulator delivered to a connection.
struct Stream {
    stop: Arc<AtomicBool>,
    delivered: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Stream {
    fn start(ws: &Arc<Workspace>) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let delivered = Arc::new(AtomicU64::new(0));
        let ws = ws.clone();
        let task = tokio::spawn({
            let (stop, delivered) = (stop.clone(), delivered.clone());
            async move {
                let mut n = 0u64;
                let mut tick = tokio::time::interval(PACE);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    n += 1;
                    let event = meeting_event("meeting.started", n, HOST_USER_ID);
                    if ws.sim.emit_event(None, &event) > 0 {
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        Stream {
            stop,
            delivered,
            task,
        }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.delivered.load(Ordering::Relaxed)
    }
}

fn store(data_dir: &Path) -> Connection {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(data_dir.join("zoomwire.db"), flags).expect("the store");
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn
}

fn count(conn: &Connection, sql: &str) -> u64 {
    conn.query_row(sql, [], |row| row.get::<_, i64>(0))
        .expect("a count") as u64
}

/// Runs not over yet, and accepted events without exactly one run per rule.
fn unsettled(conn: &Connection) -> (u64, u64) {
    let unfinished = count(
        conn,
        "SELECT count(*) FROM runs WHERE status IN ('pending', 'running')
             OR (status = 'failed' AND finished_at IS NULL)",
    );
    let without_runs = count(
        conn,
        "SELECT count(*) FROM events e WHERE
             (SELECT count(*) FROM runs r WHERE r.event_id = e.id AND r.rule = 'once') != 1
          OR (SELECT count(*) FROM runs r WHERE r.event_id = e.id AND r.rule = 'again') != 1",
    );
    (unfinished, without_runs)
}

/// Waits (at most a minute) until every run is over; the daemon keeps
/// resuming what the last kill left.
async fn wait_settled(data_dir: &Path, daemon: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (unfinished, without_runs) = unsettled(&store(data_dir));
        if unfinished == 0 {
            assert_eq!(without_runs, 0, "accepted events without their runs");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{unfinished} runs never finished:\n{}",
            tail(&daemon.stderr())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// One run as the store has it.
struct StoredRun {
    rule: String,
    status: String,
    error: String,
    topic: String,
    /// Effects by position: (in doubt, succeeded).
    effects: BTreeMap<u32, (bool, bool)>,
}

fn stored_runs(conn: &Connection) -> Vec<StoredRun> {
    let mut runs: HashMap<String, StoredRun> = HashMap::new();
    let mut statement = conn
        .prepare(
            "SELECT r.id, r.rule, r.status, coalesce(r.error, ''), e.raw
             FROM runs r JOIN events e ON e.id = r.event_id",
        )
        .unwrap();
    let rows = statement
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, String>(4)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (id, rule, status, error, raw) = row.unwrap();
        let body: serde_json::Value = serde_json::from_str(&raw).unwrap();
        let topic = body["payload"]["object"]["topic"]
            .as_str()
            .unwrap()
            .to_string();
        runs.insert(
            id,
            StoredRun {
                rule,
                status,
                error,
                topic,
                effects: BTreeMap::new(),
            },
        );
    }
    let mut statement = conn
        .prepare("SELECT run_id, seq, in_doubt, ok FROM effects")
        .unwrap();
    let rows = statement
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, u32>(1)?,
                row.get::<_, bool>(2)?,
                row.get::<_, bool>(3)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (id, seq, in_doubt, ok) = row.unwrap();
        if let Some(run) = runs.get_mut(&id) {
            run.effects.insert(seq, (in_doubt, ok));
        }
    }
    runs.into_values().collect()
}

/// What the checks found, for the report line.
#[derive(Debug, Default)]
struct Tally {
    events: u64,
    runs: usize,
    dead_in_doubt: usize,
    performed_again_in_doubt: usize,
    duplicates: usize,
}

/// The assertions of the module notes, against the store and the posts.
fn check(ws: &Workspace) -> Tally {
    let conn = store(&ws.data_dir());
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let mut posts: HashMap<(String, String), usize> = HashMap::new();
    for post in ws.sim.slack_posts() {
        let key = (
            post.channel.unwrap_or_default(),
            post.text.unwrap_or_default(),
        );
        *posts.entry(key).or_default() += 1;
    }
    let mut tally = Tally {
        events: count(&conn, "SELECT count(*) FROM events"),
        ..Tally::default()
    };
    let runs = stored_runs(&conn);
    tally.runs = runs.len();
    for run in &runs {
        let channel = format!("#{}", run.rule);
        let made = |letter: &str| {
            posts
                .get(&(channel.clone(), format!("{} {letter}", run.topic)))
                .copied()
                .unwrap_or(0)
        };
        let in_doubt: Vec<u32> = run
            .effects
            .iter()
            .filter(|(_, (doubt, _))| *doubt)
            .map(|(seq, _)| *seq)
            .collect();
        if run.rule == "once" {
            // It stops at the first: there is never a second.
            assert!(in_doubt.len() <= 1, "{}: {in_doubt:?}", run.topic);
        }
        match (run.rule.as_str(), run.status.as_str()) {
            ("once", "succeeded") => {
                assert!(in_doubt.is_empty(), "{}: {in_doubt:?}", run.topic);
                for letter in POSTS {
                    assert_eq!(made(letter), 1, "once post `{} {letter}`", run.topic);
                }
            }
            (_, "succeeded") => {
                for (seq, letter) in (1..).zip(POSTS) {
                    let limit = if run.rule == "again" && in_doubt.contains(&seq) {
                        2
                    } else {
                        1
                    };
                    let times = made(letter);
                    assert!(
                        (1..=limit).contains(&times),
                        "{} post `{} {letter}` made {times} times, in doubt: {in_doubt:?}",
                        run.rule,
                        run.topic
                    );
                    if times == 2 {
                        tally.duplicates += 1;
                    }
                }
                tally.performed_again_in_doubt += in_doubt.len();
            }
            ("once", "dead") => {
                assert!(
                    run.error.contains("is in doubt"),
                    "dead for another reason: {}",
                    run.error
                );
                let doubtful = in_doubt[0];
                for (seq, letter) in (1..).zip(POSTS) {
                    let times = made(letter);
                    match seq.cmp(&doubtful) {
                        std::cmp::Ordering::Less => assert_eq!(times, 1, "{}", run.topic),
                        std::cmp::Ordering::Equal => assert!(times <= 1, "{}", run.topic),
                        std::cmp::Ordering::Greater => assert_eq!(times, 0, "{}", run.topic),
                    }
                }
                tally.dead_in_doubt += 1;
            }
            (rule, status) => panic!(
                "run of `{rule}` for {} ended {status}: {}",
                run.topic, run.error
            ),
        }
    }
    assert_eq!(
        tally.runs as u64,
        2 * tally.events,
        "one run per rule and event"
    );
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_at_random_points_under_a_stream_nothing_accepted_is_lost_or_repeated() {
    let seed = std::env::var("TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("crash torture seed {seed} (TORTURE_SEED={seed} replays these kill points)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let ws = workspace().await;
    let started = Instant::now();
    let stream = Stream::start(&ws);
    for kill in 0..KILLS {
        let daemon = ws.start(kill + 1).await;
        tokio::time::sleep(Duration::from_millis(rng.u64(100..800))).await;
        daemon.kill().await;
    }
    let daemon = ws.start(KILLS + 1).await;
    let delivered = stream.stop().await;
    // The last events delivered reach the store.
    tokio::time::sleep(Duration::from_secs(1)).await;
    wait_settled(&ws.data_dir(), &daemon).await;
    let tally = check(&ws);
    eprintln!(
        "{KILLS} kills in {:?}: {delivered} events delivered, {tally:?}",
        started.elapsed()
    );
    assert!(tally.events > 100, "a stream, not a trickle: {tally:?}");
    assert!(
        tally.dead_in_doubt + tally.performed_again_in_doubt > 0,
        "no kill landed while a post was in flight: {tally:?}"
    );
    daemon.kill().await;
}

/// A tmpfs mounted on a folder for the test's life.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "cannot mount a tmpfs on {} (the tests run as root)",
            at.display()
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the file system holding `dir` until it refuses to take more.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("the filler");
    let chunk = vec![0u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_mid_stream_pauses_intake_and_loses_nothing() {
    let ws = workspace().await;
    let _tmpfs = Tmpfs::mount(&ws.data_dir(), "24m");
    let stream = Stream::start(&ws);
    let daemon = ws.start(1).await;
    tokio::time::sleep(Duration::from_millis(800)).await;

    let filler = fill(&ws.data_dir());
    daemon
        .wait_for_log("cannot journal event: intake paused")
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Killed while the disk is full: the store is left mid-write.
    daemon.kill().await;

    std::fs::remove_file(&filler).expect("space freed");
    let daemon = ws.start(2).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Full again while it runs, then freed: it carries on by itself.
    let filler = fill(&ws.data_dir());
    tokio::time::sleep(Duration::from_secs(1)).await;
    std::fs::remove_file(&filler).expect("space freed");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let delivered = stream.stop().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    wait_settled(&ws.data_dir(), &daemon).await;
    let tally = check(&ws);
    eprintln!("full disk: {delivered} events delivered, {tally:?}");
    assert!(tally.events > 50, "{tally:?}");
    assert!(
        daemon.logged("journal write failed").len()
            + daemon.logged("cannot journal event: intake paused").len()
            > 0,
        "the second fill was felt:\n{}",
        tail(&daemon.stderr())
    );
    // A run whose end could not be written is written again by the daemon
    // that ran it, not resumed by it as if another process had left it (which
    // would repeat its last post, or call a post it made in doubt).
    let resumed = daemon.logged("resuming a requeued run");
    assert!(resumed.is_empty(), "{resumed:#?}");
    daemon.kill().await;
}
