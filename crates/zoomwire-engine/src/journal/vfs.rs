//! The writer's connection writes a commit's WAL frames with one write
//! instead of two a frame: a VFS over SQLite's "unix" (`csrc/wal_frames.c`)
//! gathers the log's writes that follow on from each other (each frame's
//! 24-byte header, then its page) and sends them once the commit frame is in,
//! before any other call on the file. Everything else about the file, and
//! every other connection, is SQLite's own.
//!
//! Written in C because a VFS is C callbacks over C structs, and no
//! maintained crate wraps SQLite's own VFS (the Rust VFS crates implement a
//! whole one, locking and shared memory included, over `std::fs`).

#![allow(
    unsafe_code,
    reason = "calls the C function that registers the VFS; it takes no arguments and SQLite serialises registration"
)]

use std::ffi::c_int;
use std::sync::OnceLock;

/// The VFS's name, for `Connection::open_with_flags_and_vfs`.
pub(crate) const NAME: &str = "zoomwire-wal-frames";

unsafe extern "C" {
    /// Registers the VFS (not as the default); `SQLITE_OK` (0) or SQLite's error.
    fn zoomwire_register_wal_frames() -> c_int;
    /// Frame headers gathered so far by this thread.
    #[cfg(test)]
    fn zoomwire_wal_frames_gathered() -> std::ffi::c_long;
    /// Gathered writes sent to the log so far by this thread.
    #[cfg(test)]
    fn zoomwire_wal_writes_sent() -> std::ffi::c_long;
}

/// Frames gathered and writes sent so far by this thread (for the tests).
#[cfg(test)]
fn frames_and_writes() -> (std::ffi::c_long, std::ffi::c_long) {
    // SAFETY: no arguments; each reads a thread-local counter.
    unsafe { (zoomwire_wal_frames_gathered(), zoomwire_wal_writes_sent()) }
}

/// Registers the VFS once; `false` if SQLite refused it (the writer then
/// opens its connection with the default VFS, as before).
pub(crate) fn registered() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        // SAFETY: no arguments; it initialises SQLite, which is thread-safe
        // in its default (serialized) build, and runs once here.
        let rc = unsafe { zoomwire_register_wal_frames() };
        if rc != 0 {
            tracing::warn!(
                code = rc,
                "SQLite refused the WAL frame writer; the journal writes frames as SQLite does"
            );
        }
        rc == 0
    })
}

#[cfg(test)]
mod tests {
    use rusqlite::{Connection, OpenFlags};

    use super::*;
    use crate::engine::journal::Journal;
    use crate::event::{Event, Source};
    use crate::journal::{DB_FILE, JournalOptions, SqliteJournal};

    /// Writes `count` events through the journal's writer.
    fn write_events(journal: &SqliteJournal, count: u32) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for n in 0..count {
            let body = format!(
                r#"{{"event":"a.b","event_ts":{n},"payload":{{"pad":"{}"}}}}"#,
                "x".repeat(900)
            );
            let event = Event::parse(&body, Source::Fire).unwrap();
            assert!(runtime.block_on(journal.accept_event(&event)).unwrap());
        }
    }

    /// A store in WAL mode written through the VFS on this thread, with
    /// `synchronous` as given, and a table of blobs.
    fn gathering_store(path: &std::path::Path, synchronous: &str) -> Connection {
        assert!(registered());
        let conn = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), NAME).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={synchronous};
             PRAGMA wal_autocheckpoint=0;
             CREATE TABLE blobs (id INTEGER PRIMARY KEY, b BLOB NOT NULL);"
        ))
        .unwrap();
        conn
    }

    /// One transaction of `rows` blobs of 3,000 bytes: a page each.
    fn insert_blobs(conn: &Connection, rows: usize, fill: u8) {
        let tx = conn.unchecked_transaction().unwrap();
        for _ in 0..rows {
            tx.execute("INSERT INTO blobs (b) VALUES (?1)", [vec![fill; 3000]])
                .unwrap();
        }
        tx.commit().unwrap();
    }

    #[test]
    fn a_commits_frames_go_to_the_log_in_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let conn = gathering_store(&dir.path().join("gather.db"), "FULL");
        let (frames_before, writes_before) = frames_and_writes();
        for commit in 0..50 {
            insert_blobs(&conn, 20, commit);
        }
        let (frames_after, writes_after) = frames_and_writes();
        let (frames, writes) = (frames_after - frames_before, writes_after - writes_before);
        assert!(frames >= 50 * 20, "a page a row: {frames} frames");
        // One write a commit, and one for the log's header, synced alone.
        assert!(
            writes <= 52,
            "{writes} writes for 50 commits of {frames} frames"
        );
    }

    /// SQLite finds every page and every frame it reads whole.
    fn assert_intact(conn: &Connection) {
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }

    /// The rows, and those whose blob is whole: 3,000 bytes of its commit's
    /// fill (ids 1 to 12 the first, 13 to 24 the second, ...).
    const WHOLE_ROWS: &str = "SELECT count(*), sum(length(b) = 3000
         AND substr(b, 3000, 1) = substr(b, 1, 1)
         AND hex(substr(b, 1, 1)) = printf('%02X', (id - 1) / 12 + 1)) FROM blobs";

    #[test]
    fn readers_see_each_commit_in_full_without_a_sync() {
        // synchronous=NORMAL: SQLite publishes a commit's frames to readers
        // without syncing the log first, so they must be in the file by then.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("normal.db");
        let conn = gathering_store(&path, "NORMAL");
        let reader = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        for commit in 1..=40u8 {
            insert_blobs(&conn, 12, commit);
            let (rows, sum): (i64, i64) = reader
                .query_row(WHOLE_ROWS, [], |row| Ok((row.get(0)?, row.get(1)?)))
                .unwrap();
            assert_eq!(
                (rows, sum),
                (i64::from(commit) * 12, i64::from(commit) * 12)
            );
        }
        assert_intact(&reader);
    }

    #[test]
    fn readers_see_a_commit_whose_last_frame_starts_a_new_write() {
        // A commit of n frames ends one write's worth of frames at every
        // frame count: some commit frame's header fits in one write and its
        // page needs the next, which must still go out with the commit.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("boundary.db");
        let conn = gathering_store(&path, "NORMAL");
        let reader = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let mut expected = 0;
        for rows in 20..=80 {
            insert_blobs(&conn, rows, rows as u8);
            expected += rows as i64;
            let whole: i64 = reader
                .query_row(
                    "SELECT count(*) FROM blobs WHERE length(b) = 3000",
                    [],
                    |row| row.get(0),
                )
                .unwrap();
            assert_eq!(whole, expected, "after a commit of {rows} rows");
            assert_intact(&reader);
        }
    }

    #[test]
    fn a_commit_past_what_one_write_takes_goes_in_several() {
        // SQLite's unix files write at most 128 KiB a call; a commit of
        // ~150 frames (600 KiB) is sent in pieces, each whole.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("large.db");
        let conn = gathering_store(&path, "NORMAL");
        let writes = frames_and_writes().1;
        for commit in 1..=3 {
            insert_blobs(&conn, 150, commit);
        }
        let writes = frames_and_writes().1 - writes;
        assert!(
            (15..=30).contains(&writes),
            "{writes} writes for 3 commits of 600 KiB"
        );
        let reader = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let rows: i64 = reader
            .query_row(
                "SELECT count(*) FROM blobs WHERE length(b) = 3000",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(rows, 450);
        assert_intact(&reader);
    }

    #[test]
    fn plain_sqlite_reads_the_log_the_writer_left() {
        assert!(registered());
        let dir = tempfile::tempdir().unwrap();
        let options = JournalOptions {
            prune_interval: None,
            ..JournalOptions::default()
        };
        let journal = SqliteJournal::open(dir.path(), options).unwrap();
        write_events(&journal, 200);
        // The store as a crash leaves it (database and log copied while
        // open), read by SQLite's own VFS: every frame's checksum holds.
        let copy = tempfile::tempdir().unwrap();
        for suffix in ["", "-wal"] {
            let name = format!("{DB_FILE}{suffix}");
            std::fs::copy(dir.path().join(&name), copy.path().join(&name)).unwrap();
        }
        drop(journal);
        let plain = Connection::open(copy.path().join(DB_FILE)).unwrap();
        let events: i64 = plain
            .query_row("SELECT count(*) FROM events", [], |row| row.get(0))
            .unwrap();
        assert_eq!(events, 200);
        assert_intact(&plain);
    }
}
