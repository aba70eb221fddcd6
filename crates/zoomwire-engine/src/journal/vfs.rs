//! The writer's connection writes each WAL frame with one write instead of
//! two: a VFS over SQLite's "unix" (`csrc/wal_frames.c`) joins a frame's
//! 24-byte header to the page that follows it. Everything else about the
//! file, and every other connection, is SQLite's own.
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
    /// Frames written with one write so far, over the process.
    #[cfg(test)]
    fn zoomwire_wal_frames_joined() -> std::ffi::c_long;
}

/// Frames written with one write so far (for the tests).
#[cfg(test)]
fn joined_frames() -> std::ffi::c_long {
    // SAFETY: no arguments; reads a counter atomically.
    unsafe { zoomwire_wal_frames_joined() }
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
    use rusqlite::Connection;

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

    #[test]
    fn the_writer_joins_each_frame_and_plain_sqlite_reads_the_log() {
        assert!(registered());
        let dir = tempfile::tempdir().unwrap();
        let options = JournalOptions {
            prune_interval: None,
            ..JournalOptions::default()
        };
        let journal = SqliteJournal::open(dir.path(), options).unwrap();
        let before = joined_frames();
        write_events(&journal, 200);
        assert!(
            joined_frames() >= before + 200,
            "each commit's frames joined"
        );
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
        let check: String = plain
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }
}
