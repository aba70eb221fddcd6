//! WAL checkpoints off the writer's path.
//!
//! SQLite copies the write-ahead log back into the database at checkpoints,
//! and by default the connection whose commit crosses 1,000 pages does it,
//! syncing twice while it holds the writer's thread: every event waiting
//! behind that commit waits for the checkpoint too. Here a thread with its
//! own connection runs a passive checkpoint every [`INTERVAL`] instead
//! (passive: it never blocks the writer, and copies what readers allow),
//! and the writer's own automatic checkpoint is kept only as a backstop at
//! [`WRITER_AUTOCHECKPOINT_PAGES`], should this thread fall behind.
//!
//! A passive checkpoint alone never lets the log start over: SQLite rewinds
//! the log only when a writer begins while every frame has been copied, and
//! under a steady stream the writer commits while each pass runs, so the
//! pass always ends a few frames short. The log then grew to the backstop
//! (64 MiB) and every commit appended to a growing file (an append's sync
//! costs 2 to 3 times an overwrite's here). So once a pass has copied the
//! bulk of a log past [`RESTART_PAGES`], it asks the writer ([`LogRestart`])
//! to copy the few frames left itself, when no batch is waiting: nothing can
//! commit meanwhile, the copy completes, and the writer's next transaction
//! rewinds the log. The log stays near [`RESTART_PAGES`] and its file is
//! overwritten in place. (In a burst the writer is never idle; the log then
//! grows to the backstop as before.)

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use super::JournalSync;

/// The writer checkpoints by itself only past this many WAL pages (64 MiB
/// with 4 KiB pages), which the background checkpoints keep it from reaching.
pub(crate) const WRITER_AUTOCHECKPOINT_PAGES: i64 = 16_384;

/// How often the background thread checkpoints. Short, so that each pass
/// copies little: a pass writes what was committed since the last one into
/// the database and syncs it, and a commit's log sync that meets that sync
/// on the disk waits for it. With 250 ms, a pass at 2,000 events/s copied
/// ~1,900 frames in ~6 ms, and most of the slowest 2% of posts had their
/// commit inside one (2-4 ms instead of ~0.3). With 50 ms (`zoomwire bench`
/// at 2,000 events/s, quiet machine, 18 alternated runs): p99 event-to-Slack
/// median 2.23 ms (1.97-3.48) against 3.73 (2.10-5.07), CPU per event the
/// same. 25 ms was not better (2.67 median of 6, one run 73 ms). An idle
/// store's pass finds nothing to copy.
const INTERVAL: Duration = Duration::from_millis(50);

/// A log of at least this many pages (4 MiB with 4 KiB pages) is rewound
/// once a background pass has copied it ([`LogRestart`]).
pub(crate) const RESTART_PAGES: i64 = 1_024;

/// Set by the checkpoint thread when the log is long and copied but for the
/// frames committed during its pass; taken by the writer when idle,
/// which checkpoints those frames itself so that its next transaction
/// rewinds the log.
#[derive(Clone, Default)]
pub(crate) struct LogRestart(Arc<AtomicBool>);

impl LogRestart {
    fn ask(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Called by the writer with no job waiting: finishes the checkpoint if one
    /// was asked for. A pass that could not finish (a reader still on an old
    /// snapshot) is simply asked for again by the next background pass.
    pub(crate) fn finish_if_asked(&self, writer: &Connection) {
        if !self.0.swap(false, Ordering::Relaxed) {
            return;
        }
        if let Err(error) = passive_checkpoint(writer) {
            tracing::debug!(error = %error, "the writer's checkpoint failed; the next pass asks again");
        }
    }
}

/// The checkpoint thread: stopped and joined when dropped, so that its
/// connection is closed before the writer's (the last connection to close
/// checkpoints everything and removes the log).
pub(crate) struct Checkpointer {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the checkpoint thread for the store at `path`.
pub(crate) fn spawn(
    path: PathBuf,
    busy_timeout: Duration,
    sync: JournalSync,
    restart: LogRestart,
) -> std::io::Result<Checkpointer> {
    let (stop, stopped) = channel();
    // At most 15 bytes, the kernel's limit (as the writer's thread).
    let thread = std::thread::Builder::new()
        .name("zoomwire-ckpt".into())
        .spawn(move || checkpoint_loop(path, busy_timeout, sync, &restart, stopped))?;
    Ok(Checkpointer {
        stop: Some(stop),
        thread: Some(thread),
    })
}

fn checkpoint_loop(
    path: PathBuf,
    busy_timeout: Duration,
    sync: JournalSync,
    restart: &LogRestart,
    stop: Receiver<()>,
) {
    let conn = match open(&path, busy_timeout, sync) {
        Ok(conn) => conn,
        Err(error) => {
            tracing::warn!(path = %path.display(), error = %error, "cannot open the store for background checkpoints; the writer checkpoints by itself");
            return;
        }
    };
    while matches!(stop.recv_timeout(INTERVAL), Err(RecvTimeoutError::Timeout)) {
        match passive_checkpoint(&conn) {
            Ok(pass)
                if pass.log_pages >= RESTART_PAGES && pass.copied_pages * 2 >= pass.log_pages =>
            {
                restart.ask()
            }
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(error = %error, "background checkpoint failed; trying again")
            }
        }
    }
}

/// What one checkpoint pass saw (by the background thread or the writer):
/// the log's length and how much of it is in the database, in pages.
struct Pass {
    log_pages: i64,
    copied_pages: i64,
}

fn passive_checkpoint(conn: &Connection) -> rusqlite::Result<Pass> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok(Pass {
            log_pages: row.get(1)?,
            copied_pages: row.get(2)?,
        })
    })
}

fn open(path: &PathBuf, busy_timeout: Duration, sync: JournalSync) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(busy_timeout)?;
    // The checkpoint syncs the log and the database as the writer would.
    conn.pragma_update(None, "synchronous", sync.pragma())?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::journal::Journal;
    use crate::event::{Event, Source};
    use crate::journal::{JournalOptions, SqliteJournal};

    #[tokio::test]
    async fn the_log_is_copied_into_the_database_without_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let journal = SqliteJournal::open(dir.path(), JournalOptions::default()).unwrap();
        let db = journal.path().to_path_buf();
        let before = std::fs::metadata(&db).unwrap().len();
        for n in 0..200 {
            let body = serde_json::json!({
                "event": "meeting.started",
                "event_ts": 1_732_000_000_000i64 + n,
                "payload": {"object": {"uuid": format!("u{n}"), "topic": "x".repeat(500)}}
            });
            let event = Event::from_value(&body, Source::Test).unwrap();
            assert!(journal.accept_event(&event).await.unwrap());
        }
        // Far below the writer's own threshold: only the background thread
        // can have grown the database file.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::metadata(&db).unwrap().len() <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint within 5 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Under a steady stream of commits the log is rewound near
    /// [`RESTART_PAGES`] instead of growing to the writer's backstop: for
    /// 2.5 s, 1,600 commits a second of a 3 KB event each (about 4 pages
    /// each, some 60 MiB through the log), and its file stays far smaller.
    #[tokio::test]
    async fn the_log_is_rewound_under_a_steady_stream() {
        let dir = tempfile::tempdir().unwrap();
        let options = JournalOptions {
            sync: JournalSync::Normal,
            ..JournalOptions::default()
        };
        let journal = SqliteJournal::open(dir.path(), options).unwrap();
        let wal = dir.path().join("zoomwire.db-wal");
        let topic = "x".repeat(3_000);
        let started = std::time::Instant::now();
        let mut n = 0i64;
        while started.elapsed() < Duration::from_millis(2_500) {
            for _ in 0..16 {
                let body = serde_json::json!({
                    "event": "meeting.started",
                    "event_ts": 1_732_000_000_000i64 + n,
                    "payload": {"object": {"uuid": format!("u{n}"), "topic": topic}}
                });
                let event = Event::from_value(&body, Source::Test).unwrap();
                assert!(journal.accept_event(&event).await.unwrap());
                n += 1;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let log = std::fs::metadata(&wal).unwrap().len();
        assert!(
            log < 16 << 20,
            "the log grew to {} MiB for {n} commits",
            log >> 20
        );
    }
}
