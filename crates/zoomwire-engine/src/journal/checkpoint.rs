//! WAL checkpoints off the writer's path.
//!
//! SQLite copies the write-ahead log back into the database at checkpoints,
//! and by default the connection whose commit crosses 1,000 pages does it,
//! syncing twice while it holds the writer's thread: every event waiting
//! behind that commit waits for the checkpoint too. Here a thread with its
//! own connection runs a passive checkpoint a few times a second instead
//! (passive: it never blocks the writer, and copies what readers allow),
//! and the writer's own automatic checkpoint is kept only as a backstop at
//! [`WRITER_AUTOCHECKPOINT_PAGES`], should this thread fall behind.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use super::JournalSync;

/// The writer checkpoints by itself only past this many WAL pages (64 MiB
/// with 4 KiB pages), which the background checkpoints keep it from reaching.
pub(crate) const WRITER_AUTOCHECKPOINT_PAGES: i64 = 16_384;

/// How often the background thread checkpoints.
const INTERVAL: Duration = Duration::from_millis(250);

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
) -> std::io::Result<Checkpointer> {
    let (stop, stopped) = channel();
    let thread = std::thread::Builder::new()
        .name("zoomwire-checkpoint".into())
        .spawn(move || checkpoint_loop(path, busy_timeout, sync, stopped))?;
    Ok(Checkpointer {
        stop: Some(stop),
        thread: Some(thread),
    })
}

fn checkpoint_loop(path: PathBuf, busy_timeout: Duration, sync: JournalSync, stop: Receiver<()>) {
    let conn = match open(&path, busy_timeout, sync) {
        Ok(conn) => conn,
        Err(error) => {
            tracing::warn!(path = %path.display(), error = %error, "cannot open the store for background checkpoints; the writer checkpoints by itself");
            return;
        }
    };
    while matches!(stop.recv_timeout(INTERVAL), Err(RecvTimeoutError::Timeout)) {
        if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %error, "background checkpoint failed; trying again");
        }
    }
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
}
