//! Opening the store file: connection settings, the check that the file is a
//! healthy zoomwire store, and the schema migrations.
//!
//! The schema version lives in SQLite's `user_version` and the file is marked
//! as ours with `application_id`, so that a store written by a newer zoomwire,
//! or some other SQLite file at the same path, is refused with a clear error
//! instead of being altered. Each migration runs in its own transaction;
//! nothing here ever deletes or recreates the file.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

use super::{JournalOpenError, JournalSync};

/// `application_id` of a zoomwire store ("zwir").
pub(crate) const APPLICATION_ID: i32 = 0x7a77_6972;

/// Schema migrations, in order: the store's `user_version` is the number applied.
const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

const V1: &str = "
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    ts INTEGER NOT NULL,
    source TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    raw TEXT NOT NULL
);
CREATE INDEX events_received ON events(received_at);

CREATE TABLE dedupe (
    id TEXT PRIMARY KEY,
    received_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX dedupe_expires ON dedupe(expires_at);

CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    key TEXT,
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    error TEXT,
    output TEXT,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    updated_at INTEGER NOT NULL
);
CREATE INDEX runs_created ON runs(created_at);
CREATE INDEX runs_rule ON runs(rule, created_at);
CREATE INDEX runs_status ON runs(status, created_at);
CREATE INDEX runs_event ON runs(event_id);

CREATE TABLE effects (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    name TEXT NOT NULL,
    args TEXT NOT NULL,
    ok INTEGER NOT NULL,
    result TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    replayed INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;

CREATE TABLE logs (
    run_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (run_id, attempt, idx)
) WITHOUT ROWID;

CREATE TABLE state (
    rule TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    expires_at INTEGER,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (rule, key)
) WITHOUT ROWID;
CREATE INDEX state_expires ON state(expires_at) WHERE expires_at IS NOT NULL;
";

/// The run history's filters by rule and status together (the admin page's
/// runs list, and its counts per rule and outcome), read from one index.
const V2: &str = "
CREATE INDEX runs_rule_status ON runs(rule, status, created_at);
";

/// Effects written as started before they are performed: the record of the
/// effect, when it completes, replaces its row; a row left behind by a crash
/// is an effect in doubt. `in_doubt` marks the effect records that say so.
const V3: &str = "
CREATE TABLE effect_starts (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    args TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
ALTER TABLE effects ADD COLUMN in_doubt INTEGER NOT NULL DEFAULT 0;
";

/// What the store keeps sealed (`seal.rs`): an event's download token, taken
/// out of its body, and an effect's result before redaction, for replay.
const V4: &str = "
ALTER TABLE events ADD COLUMN sealed_token BLOB;
ALTER TABLE effects ADD COLUMN sealed_result BLOB;
";

/// An event's own row is its dedupe entry while it is stored; `dedupe` keeps
/// only the ids of events pruned within their window (one index written per
/// event instead of two). The entries of stored events go; the version
/// itself keeps an older zoomwire, which would miss them, from opening the
/// store and taking a re-delivered event as new.
const V5: &str = "
DELETE FROM dedupe WHERE id IN (SELECT id FROM events);
";

/// One index fewer written per run: `runs_rule_status` answers what
/// `runs_rule` did (a rule's runs, newest first, and its counts since a
/// time), one range per status, merged (`pages.rs`).
const V6: &str = "
DROP INDEX IF EXISTS runs_rule;
";

/// Events found by a 64-bit hash of their id instead of the id itself.
/// Ids are random (a meeting uuid, a participant): the index on them takes
/// a page write (a WAL frame) per event wherever it lands; an index of
/// 8-byte keys is ~6x smaller, so a commit's events share more of its
/// pages and it splits less (writer harness, 9000 events, 34 a commit:
/// 1.36 -> 0.47 WAL frames per event for the id index, 2.32 -> 1.42 in all). A primary key cannot be dropped in
/// SQLite, so the table is rebuilt, keeping rowids; `id_hash` is filled in
/// by [`fill_event_id_hashes`] in the same transaction, and the writer
/// keeps ids unique (`ops::accept`). Written so that a store already in
/// this form (the e2e tests rewind a version number) goes through again.
const V7: &str = "
CREATE TABLE events_v7 (
    id TEXT NOT NULL,
    type TEXT NOT NULL,
    ts INTEGER NOT NULL,
    source TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    raw TEXT NOT NULL,
    sealed_token BLOB,
    id_hash INTEGER NOT NULL DEFAULT 0
);
INSERT INTO events_v7 (rowid, id, type, ts, source, received_at, raw, sealed_token)
    SELECT rowid, id, type, ts, source, received_at, raw, sealed_token FROM events;
DROP TABLE events;
ALTER TABLE events_v7 RENAME TO events;
CREATE INDEX events_received ON events(received_at);
CREATE INDEX events_id ON events(id_hash);
";

/// One index fewer written per event: `events_received` goes, events are
/// kept in the order they were received by their rowid (the writer appends
/// them in that order and moves a re-delivered event to the end, `ops.rs`),
/// and pruning walks them oldest first by rowid (`prune.rs`). The table is
/// rebuilt in receive order, because before this version a re-delivery
/// after its window was updated in place; rowids are not referenced
/// anywhere else. Writer harness, 9000 events: 3.89 -> 3.56 WAL frames per
/// event at 4 a commit, 1.42 -> 1.34 at 34; 7% fewer instructions in `ops`.
const V8: &str = "
CREATE TABLE events_v8 (
    id TEXT NOT NULL,
    type TEXT NOT NULL,
    ts INTEGER NOT NULL,
    source TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    raw TEXT NOT NULL,
    sealed_token BLOB,
    id_hash INTEGER NOT NULL DEFAULT 0
);
INSERT INTO events_v8 (id, type, ts, source, received_at, raw, sealed_token, id_hash)
    SELECT id, type, ts, source, received_at, raw, sealed_token, id_hash FROM events
    ORDER BY received_at, rowid;
DROP TABLE events;
ALTER TABLE events_v8 RENAME TO events;
CREATE INDEX events_id ON events(id_hash);
";

/// Events found through a table written in key order (`event_index.rs`)
/// instead of an index SQLite updates at every insert: with random ids,
/// that index took a page write per event. Every stored event goes into
/// the table, and `event_index_upto` says up to which rowid the table is
/// complete. Written so that a store already in this form (the e2e tests
/// rewind a version number, and V8 numbers the events again) is indexed
/// afresh.
const V9: &str = "
CREATE TABLE IF NOT EXISTS event_index (
    id_hash INTEGER NOT NULL,
    event_rowid INTEGER NOT NULL,
    PRIMARY KEY (id_hash, event_rowid)
) WITHOUT ROWID;
DELETE FROM event_index;
INSERT INTO event_index (id_hash, event_rowid)
    SELECT id_hash, rowid FROM events ORDER BY id_hash, rowid;
DROP INDEX IF EXISTS events_id;
CREATE TABLE IF NOT EXISTS event_index_upto (upto INTEGER NOT NULL);
DELETE FROM event_index_upto;
INSERT INTO event_index_upto (upto) SELECT ifnull(max(rowid), 0) FROM events;
";

/// One index fewer written per run: `runs_event` goes. Event ids are
/// random, so each run's entry landed on a page of its own: in the writer
/// harness (9000 events, 30 a commit, a run per 9 events) 1.36 WAL frames
/// per run, the most of any table or index but the events themselves. Only
/// pruning asked it anything (does an unfinished run need this event?),
/// and answers that now from the unfinished runs, read once per step
/// through `runs_status` (`prune.rs`). 100k-event burst (`zoomwire bench`,
/// 4 alternated runs each): the writer's thread 8.3-8.6 µs per event
/// against 9.2-9.6, 60,000 events/s against 55,800 (medians).
const V10: &str = "
DROP INDEX IF EXISTS runs_event;
";

/// The runs waiting for a retry (failed, not finished), found without
/// walking every failed run: `runs_status` has no `finished_at`, so finding
/// them meant reading each failed run's row (~19 ms with 200,000 runs
/// failed for good), and the daemon looks every second (requeued runs) and
/// pruning at every step. Partial, so a run is in it only while it waits
/// for a retry: runs that succeed never touch it. The reads name it
/// (`query::select_unfinished`), as SQLite's planner prefers `runs_status`.
const V11: &str = "
CREATE INDEX IF NOT EXISTS runs_retrying ON runs(created_at)
    WHERE status = 'failed' AND finished_at IS NULL;
";

/// The version whose migration needs [`fill_event_id_hashes`].
const EVENT_ID_HASH_VERSION: i64 = 7;

/// The versions whose migration rebuilds `events` (V7, V8).
fn rebuilds_events(version: i64) -> bool {
    matches!(version, 7 | 8)
}

/// Sets `id_hash` of every event (after [`V7`] rebuilt the table).
fn fill_event_id_hashes(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    let rows: Vec<(i64, String)> = tx
        .prepare("SELECT rowid, id FROM events")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut update = tx.prepare("UPDATE events SET id_hash = ?2 WHERE rowid = ?1")?;
    for (rowid, id) in rows {
        update.execute(rusqlite::params![rowid, super::codec::event_id_hash(&id)])?;
    }
    Ok(())
}

/// The version that took download tokens out of stored bodies: a store
/// migrated from before it has its bodies cleaned once (`tokens.rs`).
pub(crate) const SEALED_TOKENS_VERSION: i64 = 4;

/// The writer connection's page cache, in KiB (negative: SQLite's unit for
/// a size rather than a page count). A trade of memory for reads: in a 100k
/// burst 8 MiB held the peak 3.8 MiB higher and saved ~0.9 page reads and
/// ~0.5 WAL writes per event (2 MiB: 2 more reads and 1.3 more writes).
const WRITER_CACHE_KIB: i64 = -4096;

/// A read connection's page cache, in KiB (SQLite's default is 2000). In
/// WAL mode a reader's cache lasts one read transaction: SQLite empties it
/// at the next one whenever the writer committed meanwhile, which in a
/// burst is every time, so a larger cache only holds one long scan's pages
/// (1.7 MiB of a 100k burst's peak RSS with the default).
const READER_CACHE_KIB: i64 = -512;

/// Statements the writer keeps prepared: every statement it runs (intake,
/// runs, effects, state, requeue, pruning) fits, so none is compiled again
/// after a pruning pass evicts it (rusqlite keeps 16 by default).
const WRITER_STATEMENTS: usize = 48;

/// Opens (creating when absent) the writer's connection: WAL, `synchronous`
/// as `sync` says, schema migrated, and the file checked when `verify` is set.
pub(crate) fn open_writer(
    path: &Path,
    busy_timeout: Duration,
    verify: bool,
    max_size_bytes: Option<u64>,
    sync: JournalSync,
) -> Result<Connection, JournalOpenError> {
    let fail = |e: rusqlite::Error| open_error(path, e);
    let mut conn = if super::vfs::registered() {
        Connection::open_with_flags_and_vfs(path, OpenFlags::default(), super::vfs::NAME)
    } else {
        Connection::open(path)
    }
    .map_err(fail)?;
    conn.busy_timeout(busy_timeout).map_err(fail)?;
    conn.set_prepared_statement_cache_capacity(WRITER_STATEMENTS);
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(fail)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(JournalOpenError::Open {
            path: path.to_path_buf(),
            detail: format!("the file system refused WAL mode (journal_mode is `{mode}`)"),
        });
    }
    // FULL: durability per committed batch, the WAL is synced on every commit.
    conn.pragma_update(None, "synchronous", sync.pragma())
        .map_err(fail)?;
    // The writer's page cache: SQLite's default (2 MiB) spills dirty pages of
    // a large batch to the WAL mid-transaction and reads index pages back
    // from the file on every batch (random event ids touch a page each).
    conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)
        .map_err(fail)?;
    // Checkpoints run on their own thread (`checkpoint`); this is the backstop.
    conn.pragma_update(
        None,
        "wal_autocheckpoint",
        super::checkpoint::WRITER_AUTOCHECKPOINT_PAGES,
    )
    .map_err(fail)?;
    check_identity(&conn, path)?;
    migrate(&mut conn, path)?;
    if verify {
        quick_check(&conn, path)?;
    }
    if let Some(bytes) = max_size_bytes {
        let page_size: i64 = conn
            .pragma_query_value(None, "page_size", |row| row.get(0))
            .map_err(fail)?;
        let pages = (i64::try_from(bytes).unwrap_or(i64::MAX) / page_size.max(1)).max(1);
        conn.pragma_update(None, "max_page_count", pages)
            .map_err(fail)?;
    }
    Ok(conn)
}

/// A writer connection on a new store in a temporary folder, for tests of
/// the statements (sync `normal`: they do not test durability).
#[cfg(test)]
pub(crate) fn scratch_store() -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zoomwire.db");
    let conn = open_writer(
        &path,
        Duration::from_secs(1),
        false,
        None,
        JournalSync::Normal,
    )
    .unwrap();
    (dir, conn)
}

/// Opens a read-only connection to a store the writer already opened.
pub(crate) fn open_reader(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    // Read-write at the file level (WAL readers update the shared-memory
    // index), read-only by `query_only`; never creates the file.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(busy_timeout)?;
    conn.pragma_update(None, "query_only", true)?;
    conn.pragma_update(None, "cache_size", READER_CACHE_KIB)?;
    Ok(conn)
}

/// Refuses files that are SQLite but not a zoomwire store, or a newer one.
fn check_identity(conn: &Connection, path: &Path) -> Result<(), JournalOpenError> {
    let fail = |e: rusqlite::Error| open_error(path, e);
    let application_id: i32 = conn
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .map_err(fail)?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(fail)?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))
        .map_err(fail)?;
    let empty = version == 0 && tables == 0;
    if application_id != APPLICATION_ID && !empty {
        return Err(JournalOpenError::Corrupt {
            path: path.to_path_buf(),
            detail: "it is an SQLite database, but not a zoomwire store".into(),
        });
    }
    if version > SCHEMA_VERSION {
        return Err(JournalOpenError::TooNew {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Applies the migrations the store lacks, each in its own transaction.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), JournalOpenError> {
    let fail = |e: rusqlite::Error| open_error(path, e);
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(fail)?;
        // Read inside the write lock: another process may have migrated meanwhile.
        let version: i64 = tx
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(fail)?;
        let Some(sql) = usize::try_from(version)
            .ok()
            .and_then(|applied| MIGRATIONS.get(applied))
        else {
            return Ok(());
        };
        let rebuild = rebuilds_events(version + 1);
        if rebuild {
            // The old table's pages go to the free list: zeroed, so that
            // nothing of its bodies (a store from before version 4 still has
            // download tokens in them, `upgrade.rs`) stays in the file.
            tx.pragma_update(None, "secure_delete", true)
                .map_err(fail)?;
        }
        tx.execute_batch(sql).map_err(fail)?;
        if version + 1 == EVENT_ID_HASH_VERSION {
            fill_event_id_hashes(&tx).map_err(fail)?;
        }
        tx.pragma_update(None, "user_version", version + 1)
            .map_err(fail)?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(fail)?;
        tx.commit().map_err(fail)?;
        if rebuild {
            conn.pragma_update(None, "secure_delete", false)
                .map_err(fail)?;
        }
    }
}

/// `PRAGMA quick_check`: reads every page, so damage is found at start, not mid-run.
fn quick_check(conn: &Connection, path: &Path) -> Result<(), JournalOpenError> {
    let mut statement = conn
        .prepare("PRAGMA quick_check(5)")
        .map_err(|e| open_error(path, e))?;
    let problems = statement
        .query_map([], |row| row.get::<_, String>(0))
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| open_error(path, e))?;
    if problems.len() == 1 && problems[0] == "ok" {
        return Ok(());
    }
    Err(JournalOpenError::Corrupt {
        path: path.to_path_buf(),
        detail: problems.join("; "),
    })
}

/// Classifies an SQLite error met while opening: damage, locks, or the rest.
pub(crate) fn open_error(path: &Path, error: rusqlite::Error) -> JournalOpenError {
    let path = path.to_path_buf();
    match error.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => JournalOpenError::Corrupt {
            path,
            detail: error.to_string(),
        },
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            JournalOpenError::Locked { path }
        }
        _ => JournalOpenError::Open {
            path,
            detail: error.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(path: &Path) -> Result<Connection, JournalOpenError> {
        open_writer(path, Duration::from_secs(1), true, None, JournalSync::Full)
    }

    #[test]
    fn the_writer_and_readers_get_their_page_caches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zoomwire.db");
        let cache = |conn: &Connection| -> i64 {
            conn.pragma_query_value(None, "cache_size", |r| r.get(0))
                .unwrap()
        };
        let conn = writer(&path).unwrap();
        let reader = open_reader(&path, Duration::from_secs(1)).unwrap();
        assert_eq!(cache(&conn), WRITER_CACHE_KIB);
        assert_eq!(cache(&reader), READER_CACHE_KIB);
    }

    #[test]
    fn a_new_store_is_migrated_to_the_latest_version_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zoomwire.db");
        let conn = writer(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        let synchronous: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(mode, "wal");
        assert_eq!(synchronous, 2, "FULL");
        drop(conn);
        // Reopening applies nothing twice.
        writer(&path).unwrap();
    }

    #[test]
    fn sync_normal_is_asked_of_sqlite() {
        let (_dir, conn) = scratch_store();
        let synchronous: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(synchronous, 1, "NORMAL");
    }

    #[test]
    fn a_store_from_a_newer_zoomwire_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zoomwire.db");
        let conn = writer(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let error = writer(&path).unwrap_err();
        assert!(matches!(error, JournalOpenError::TooNew { .. }), "{error}");
        assert!(error.to_string().contains("zoomwire.db"), "{error}");
    }

    #[test]
    fn another_sqlite_database_is_not_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zoomwire.db");
        let other = Connection::open(&path).unwrap();
        other
            .execute_batch("CREATE TABLE notes(text TEXT); INSERT INTO notes VALUES ('keep');")
            .unwrap();
        drop(other);
        let error = writer(&path).unwrap_err();
        assert!(
            error.to_string().contains("not a zoomwire store"),
            "{error}"
        );
        let other = Connection::open(&path).unwrap();
        let kept: String = other
            .query_row("SELECT text FROM notes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, "keep");
    }

    #[test]
    fn a_size_cap_limits_the_page_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zoomwire.db");
        let conn = open_writer(
            &path,
            Duration::from_secs(1),
            false,
            Some(64 * 4096),
            JournalSync::Full,
        )
        .unwrap();
        let pages: i64 = conn
            .pragma_query_value(None, "max_page_count", |r| r.get(0))
            .unwrap();
        assert_eq!(pages, 64);
    }

    /// A store as zoomwire wrote it at schema `version`, with `rows` (SQL) in it.
    fn store_at_version(path: &Path, version: usize, rows: &str) {
        let conn = Connection::open(path).unwrap();
        for sql in &MIGRATIONS[..version] {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute_batch(&format!(
            "PRAGMA user_version = {version}; PRAGMA application_id = {APPLICATION_ID}; {rows}"
        ))
        .unwrap();
    }

    #[test]
    fn a_version_5_store_loses_runs_rule_and_keeps_its_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zoomwire.db");
        store_at_version(
            &path,
            5,
            "INSERT INTO runs (id, rule, event_id, event_type, status, attempt,
                               created_at, updated_at)
                 VALUES ('r1', 'rule-a', 'e1', 'x.y', 'succeeded', 1, 1, 1);",
        );
        let conn = writer(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'runs' AND sql IS NOT NULL ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            indexes,
            [
                "runs_created",
                "runs_retrying",
                "runs_rule_status",
                "runs_status"
            ]
        );
        let kept: i64 = conn
            .query_row("SELECT count(*) FROM runs WHERE rule = 'rule-a'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(kept, 1);
    }

    #[test]
    fn a_version_6_store_finds_its_events_by_the_hash_of_their_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zoomwire.db");
        store_at_version(
            &path,
            6,
            "INSERT INTO events (rowid, id, type, ts, source, received_at, raw, sealed_token)
                 VALUES (7, 'x.y:a', 'x.y', 1, '\"fire\"', 10, '{}', x'01'),
                        (9, 'x.y:b', 'x.y', 2, '\"fire\"', 20, '{}', NULL);",
        );
        let conn = writer(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        /// rowid, id, id_hash, received_at, sealed_token
        type Row = (i64, String, i64, i64, Option<Vec<u8>>);
        let rows: Vec<Row> = conn
            .prepare(
                "SELECT rowid, id, id_hash, received_at, sealed_token FROM events ORDER BY rowid",
            )
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let hash = super::super::codec::event_id_hash;
        assert_eq!(
            rows,
            [
                (1, "x.y:a".into(), hash("x.y:a"), 10, Some(vec![1])),
                (2, "x.y:b".into(), hash("x.y:b"), 20, None)
            ],
            "version 8 numbered them again in receive order"
        );
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(indexes.is_empty(), "no index on the id: {indexes:?}");
        let index: Vec<(i64, i64)> = conn
            .prepare("SELECT id_hash, event_rowid FROM event_index ORDER BY event_rowid")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(index, [(hash("x.y:a"), 1), (hash("x.y:b"), 2)]);
        let upto: i64 = conn
            .query_row("SELECT upto FROM event_index_upto", [], |r| r.get(0))
            .unwrap();
        assert_eq!(upto, 2, "every event is in the table");
    }

    #[test]
    fn a_version_7_store_keeps_its_events_in_receive_order_without_events_received() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zoomwire.db");
        // Event b was re-delivered after its window and updated in place.
        store_at_version(
            &path,
            7,
            "INSERT INTO events (rowid, id, id_hash, type, ts, source, received_at, raw)
                 VALUES (3, 'x.y:b', 22, 'x.y', 1, '\"fire\"', 30, '{}'),
                        (5, 'x.y:a', 11, 'x.y', 2, '\"fire\"', 20, '{}');",
        );
        let conn = writer(&path).unwrap();
        let rows: Vec<(i64, String, i64, i64)> = conn
            .prepare("SELECT rowid, id, id_hash, received_at FROM events ORDER BY rowid")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            [(1, "x.y:a".into(), 11, 20), (2, "x.y:b".into(), 22, 30)]
        );
        let received_index: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'events_received'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(received_index, 0);
    }

    #[test]
    fn an_event_is_looked_up_by_its_id_hash_not_by_a_scan() {
        let dir = tempfile::tempdir().unwrap();
        let conn = writer(&dir.path().join("zoomwire.db")).unwrap();
        let plan: Vec<String> = conn
            .prepare("EXPLAIN QUERY PLAN SELECT event_rowid FROM event_index WHERE id_hash = ?1")
            .unwrap()
            .query_map([1], |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let plan = plan.join("; ");
        assert!(
            plan.contains("SEARCH event_index USING PRIMARY KEY (id_hash=?)"),
            "{plan}"
        );
        assert!(!plan.contains("SCAN"), "{plan}");
    }
}
