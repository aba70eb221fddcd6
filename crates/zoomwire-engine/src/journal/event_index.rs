//! Finding a stored event by its id without writing a random page per event.
//!
//! Event ids are random, so an index on them (`events_id` up to schema 8)
//! had every commit write one index page per event, wherever its key
//! landed: about a third of the log and of the disk writes in a burst. Since
//! schema 9 the index is a table, `event_index (id_hash, event_rowid)`,
//! written in key order: the writer keeps the keys of events not yet in it
//! in memory ([`EventIndex`]) and, once [`FREEZE_AT`] have gathered (or
//! [`FREEZE_AFTER`] has passed), freezes that set and writes it into the
//! table [`CHUNK`] keys at a time, in key order, inside its ordinary
//! batches: each page of the table is then written about once per set, not
//! once per event. The transaction with a set's last chunk also moves
//! `event_index_upto`: every event with a rowid up to it is in the table,
//! the ones after it are in memory, read back from `events` when the store
//! opens ([`EventIndex::load`]).
//!
//! Rowids only grow: SQLite gives the next above the largest, a re-delivered
//! event's new row is inserted before its old one goes (`ops.rs`), and
//! pruning deletes only events already in the table and never lets `upto`
//! stand above the largest rowid (`prune.rs`). So "after `upto`" means "not
//! in the table yet". Another process may write the store too (`zoomwire
//! reconcile` feeds it while the daemon runs): the keys of rows this
//! process has not seen are read from `events` ([`EventIndex::catch_up`]),
//! by the writer at the start of each transaction (it holds the write lock
//! then) and by a reader before it answers "not found".
//!
//! A lookup checks the keys in memory before the table, and the writer
//! takes a frozen set out of memory only after the commit that put its last
//! chunk in the table, so a reader never misses an event that was committed
//! before it looked. Keys may outlive their row (a batch that failed, an
//! event replaced after its window): every lookup compares the id, so a
//! stale key costs a row read, never a wrong answer.
//!
//! Nearly every event looked up is new, and searching the table for it
//! was about a tenth of the writer's instructions. So a filter
//! ([`KeyFilter`]) holds every key memory or the table may hold: those
//! the table held when the store opened, and every key that has been in
//! memory since. The table takes keys only from a process's memory, and
//! every row's key passes through this process's memory too (its own
//! inserts, and [`EventIndex::catch_up`] for other processes' rows, which
//! the writer runs before its lookups), so a key the filter never held is
//! in neither, and neither is searched.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use rusqlite::{Connection, params};

use super::codec::event_id_hash;
use super::key_filter::KeyFilter;
use super::statements::Statements;

/// Keys gathered in memory before they are frozen and written.
pub(crate) const FREEZE_AT: usize = 8192;

/// Keys are frozen at least this often, however few, so that a quiet store
/// keeps few events out of the table (and prunable) for long.
pub(crate) const FREEZE_AFTER: Duration = Duration::from_secs(10);

/// Keys of a frozen set written per batch: a bound on what one commit adds.
pub(crate) const CHUNK: usize = 512;

/// `(id_hash, rowid)`: the table's key, and how keys are kept in memory.
type Key = (i64, i64);

/// The keys of stored events not yet in `event_index`, shared by the writer
/// (the only one that changes them) and the readers.
#[derive(Default)]
pub(crate) struct EventIndex {
    sets: RwLock<Sets>,
    /// Every row up to this rowid is in the table or in memory.
    seen: AtomicI64,
}

#[derive(Default)]
struct Sets {
    /// Keys gathering; frozen as a whole.
    live: BTreeSet<Key>,
    /// Keys being written into the table, in key order.
    frozen: BTreeSet<Key>,
    /// Every key the table may hold (see the module's documentation);
    /// `None` for an index not loaded from its store, whose table is
    /// always searched.
    held: Option<KeyFilter>,
}

impl Sets {
    /// Adds keys to those gathering (and to the filter, for good).
    fn gather(&mut self, keys: impl IntoIterator<Item = Key>) {
        for key in keys {
            if let Some(held) = &mut self.held {
                held.insert(key.0);
            }
            self.live.insert(key);
        }
    }
}

impl EventIndex {
    /// The keys of the events after `event_index_upto`, read from `events`.
    pub fn load(conn: &Connection) -> rusqlite::Result<EventIndex> {
        let live = conn
            .prepare(
                "SELECT id_hash, rowid FROM events
                 WHERE rowid > (SELECT upto FROM event_index_upto)",
            )?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<BTreeSet<Key>>>()?;
        let held = load_table_keys(conn, live.len())?;
        let seen = conn.query_row(
            "SELECT max(ifnull((SELECT max(rowid) FROM events), 0),
                        (SELECT upto FROM event_index_upto))",
            [],
            |row| row.get(0),
        )?;
        let mut sets = Sets {
            held: Some(held),
            ..Sets::default()
        };
        sets.gather(live);
        Ok(EventIndex {
            sets: RwLock::new(sets),
            seen: AtomicI64::new(seen),
        })
    }

    /// Takes into memory the keys of rows committed since it last looked
    /// (by another process); whether there were any.
    pub fn catch_up(&self, conn: &Connection) -> rusqlite::Result<bool> {
        let seen = self.seen.load(Ordering::Acquire);
        let keys: Vec<Key> = conn
            .prepare_cached("SELECT id_hash, rowid FROM events WHERE rowid > ?1")?
            .query_map([seen], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let Some(newest) = keys.iter().map(|&(_, rowid)| rowid).max() else {
            return Ok(false);
        };
        self.sets.write().gather(keys);
        self.seen.fetch_max(newest, Ordering::AcqRel);
        Ok(true)
    }

    /// Rowids in memory whose id hashes to `hash`, newest first; `None`
    /// when the filter never held it, so neither memory nor the table does.
    fn rowids(&self, hash: i64) -> Option<Vec<i64>> {
        let sets = self.sets.read();
        if sets
            .held
            .as_ref()
            .is_some_and(|held| !held.may_contain(hash))
        {
            return None;
        }
        let range = (hash, i64::MIN)..=(hash, i64::MAX);
        let mut rowids: Vec<i64> = sets
            .live
            .range(range.clone())
            .chain(sets.frozen.range(range))
            .map(|&(_, rowid)| rowid)
            .collect();
        rowids.sort_unstable_by(|a, b| b.cmp(a));
        Some(rowids)
    }

    /// How many keys are held in memory.
    #[cfg(test)]
    pub fn in_memory(&self) -> usize {
        let sets = self.sets.read();
        sets.live.len() + sets.frozen.len()
    }
}

/// A filter holding every key in the table, with room for as many again
/// and `more`: a scan of the table, once when the store opens (90 ms for a
/// million keys here, release build).
fn load_table_keys(conn: &Connection, more: usize) -> rusqlite::Result<KeyFilter> {
    let count: i64 = conn.query_row("SELECT count(*) FROM event_index", [], |row| row.get(0))?;
    let count = usize::try_from(count).unwrap_or_default();
    let mut held = KeyFilter::with_capacity(2 * count + more);
    let mut keys = conn.prepare("SELECT id_hash FROM event_index")?;
    let mut rows = keys.query([])?;
    while let Some(row) = rows.next()? {
        held.insert(row.get(0)?);
    }
    Ok(held)
}

/// The rowid of the stored event with this id, if any.
pub(crate) fn find_event(
    conn: &Connection,
    index: &EventIndex,
    id: &str,
) -> rusqlite::Result<Option<i64>> {
    let statements = Statements::new(conn);
    match find(&statements, index, &[], id)? {
        None if index.catch_up(conn)? => find(&statements, index, &[], id),
        found => Ok(found),
    }
}

/// [`find_event`] among the keys known, and `batch` (the open transaction's).
fn find(
    statements: &Statements<'_>,
    index: &EventIndex,
    batch: &[Key],
    id: &str,
) -> rusqlite::Result<Option<i64>> {
    let hash = event_id_hash(id);
    // Memory first: a key leaves it only once the table has it committed.
    let in_batch = batch.iter().rev().filter(|key| key.0 == hash);
    let in_batch = in_batch.map(|&(_, rowid)| rowid);
    let Some(rowids) = index.rowids(hash) else {
        // Never held: only the open transaction may have it.
        return first_with_id(statements, in_batch.collect(), id);
    };
    let in_memory: Vec<i64> = in_batch.chain(rowids).collect();
    if let Some(rowid) = first_with_id(statements, in_memory, id)? {
        return Ok(Some(rowid));
    }
    // Two plain statements rather than a join: SQLite prepared the join
    // again at every step (it costs the writer more than the lookup).
    let mut in_table: Vec<i64> = statements
        .get("SELECT event_rowid FROM event_index WHERE id_hash = ?1")?
        .query_map([hash], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    in_table.sort_unstable_by(|a, b| b.cmp(a));
    first_with_id(statements, in_table, id)
}

/// The first of `rowids` whose row has this id.
fn first_with_id(
    statements: &Statements<'_>,
    rowids: Vec<i64>,
    id: &str,
) -> rusqlite::Result<Option<i64>> {
    if rowids.is_empty() {
        return Ok(None);
    }
    let mut by_rowid = statements.get("SELECT 1 FROM events WHERE rowid = ?1 AND id = ?2")?;
    for rowid in rowids {
        if by_rowid.exists(params![rowid, id])? {
            return Ok(Some(rowid));
        }
    }
    Ok(None)
}

/// The writer's side of the index: the keys of the open transaction, and
/// the frozen set's progress into the table.
pub(crate) struct IndexWriter {
    shared: Arc<EventIndex>,
    /// Keys inserted in the open transaction.
    batch: RefCell<Vec<Key>>,
    /// The last key of the frozen set already in the table (committed).
    written: Cell<Option<Key>>,
    /// A chunk written in the open transaction: its last key, and whether
    /// it ends the frozen set.
    chunk: Cell<Option<(Key, bool)>>,
    last_freeze: Cell<Instant>,
}

impl IndexWriter {
    pub fn new(shared: Arc<EventIndex>) -> IndexWriter {
        IndexWriter {
            shared,
            batch: RefCell::default(),
            written: Cell::new(None),
            chunk: Cell::new(None),
            last_freeze: Cell::new(Instant::now()),
        }
    }

    /// The rowid of the stored event with this id, the open transaction's included.
    pub fn find(&self, statements: &Statements<'_>, id: &str) -> rusqlite::Result<Option<i64>> {
        find(statements, &self.shared, &self.batch.borrow(), id)
    }

    /// At the start of a write transaction: the keys of rows another
    /// process committed. None can commit more until this transaction ends.
    pub fn begin(&self, conn: &Connection) -> rusqlite::Result<()> {
        self.shared.catch_up(conn).map(|_| ())
    }

    /// Notes an event inserted in the open transaction.
    pub fn inserted(&self, id_hash: i64, rowid: i64) {
        self.batch.borrow_mut().push((id_hash, rowid));
    }

    /// Before the commit: writes the frozen set's next chunk into the table
    /// (freezing the gathered keys first when it is time), and makes the
    /// transaction's keys visible to lookups.
    pub fn before_commit(&self, conn: &Connection) -> rusqlite::Result<()> {
        self.freeze_if_due();
        self.write_chunk(conn)?;
        let batch = self.batch.borrow();
        if !batch.is_empty() {
            self.shared.sets.write().gather(batch.iter().copied());
        }
        Ok(())
    }

    /// After the commit (`committed`) or a failure: the chunk counts as
    /// written only if committed; a failed transaction's keys are taken back.
    pub fn after_commit(&self, committed: bool) {
        let batch = std::mem::take(&mut *self.batch.borrow_mut());
        let chunk = self.chunk.take();
        if !committed {
            if !batch.is_empty() {
                let mut sets = self.shared.sets.write();
                for key in &batch {
                    sets.live.remove(key);
                }
            }
            // The frozen set is written again from its start (a flush may
            // have added keys before the last one written); a key already in
            // the table is skipped.
            self.written.set(None);
            return;
        }
        if let Some(newest) = batch.iter().map(|&(_, rowid)| rowid).max() {
            // Rows of this transaction follow every row seen at its start.
            self.shared.seen.fetch_max(newest, Ordering::AcqRel);
        }
        match chunk {
            Some((_, true)) => {
                self.shared.sets.write().frozen.clear();
                self.written.set(None);
            }
            Some((last, false)) => self.written.set(Some(last)),
            None => {}
        }
    }

    /// Puts every key gathered so far into the table in the open transaction
    /// (before pruning, which deletes only events in it).
    pub fn flush(&self, conn: &Connection) -> rusqlite::Result<()> {
        {
            let mut sets = self.shared.sets.write();
            let live = std::mem::take(&mut sets.live);
            sets.frozen.extend(live);
        }
        self.written.set(None);
        self.chunk.set(None);
        self.write_keys(conn, usize::MAX)
    }

    fn freeze_if_due(&self) {
        let due = {
            let sets = self.shared.sets.read();
            sets.frozen.is_empty()
                && (sets.live.len() >= FREEZE_AT
                    || (!sets.live.is_empty() && self.last_freeze.get().elapsed() >= FREEZE_AFTER))
        };
        if due {
            let mut sets = self.shared.sets.write();
            sets.frozen = std::mem::take(&mut sets.live);
            self.written.set(None);
            self.last_freeze.set(Instant::now());
        }
    }

    /// Inserts the next [`CHUNK`] keys of the frozen set; with the last,
    /// moves `event_index_upto` past the set.
    fn write_chunk(&self, conn: &Connection) -> rusqlite::Result<()> {
        self.write_keys(conn, CHUNK)
    }

    /// Inserts up to `count` keys of the frozen set after the last written,
    /// committed or in the open transaction (a flush before a prune wrote
    /// the whole set: the batch's chunk then has nothing left to write).
    fn write_keys(&self, conn: &Connection, count: usize) -> rusqlite::Result<()> {
        let after = match self.chunk.get() {
            Some((_, true)) => return Ok(()),
            Some((key, false)) => Some(key),
            None => self.written.get(),
        };
        let (chunk, last, upto) = {
            let sets = self.shared.sets.read();
            if sets.frozen.is_empty() {
                return Ok(());
            }
            let from = match after {
                Some(key) => Bound::Excluded(key),
                None => Bound::Unbounded,
            };
            let chunk: Vec<Key> = sets
                .frozen
                .range((from, Bound::Unbounded))
                .take(count)
                .copied()
                .collect();
            let last = chunk
                .last()
                .is_none_or(|key| sets.frozen.last() == Some(key));
            let upto = last
                .then(|| sets.frozen.iter().map(|&(_, rowid)| rowid).max())
                .flatten();
            (chunk, last, upto)
        };
        insert_keys(conn, &chunk)?;
        if let Some(upto) = upto {
            // Never above the largest rowid: a key whose row was pruned
            // meanwhile must not cover rowids given after it.
            conn.prepare_cached(
                "UPDATE event_index_upto
                 SET upto = max(upto, min(?1, ifnull((SELECT max(rowid) FROM events), 0)))",
            )?
            .execute([upto])?;
        }
        let end = chunk.last().copied().or(after);
        self.chunk.set(end.map(|key| (key, last)));
        Ok(())
    }
}

/// Keys inserted by one statement: one step of SQLite for a group of keys
/// rather than a statement run (bind, step, reset) for each.
const GROUP: usize = 64;

/// Inserts `keys` (already in the table: skipped), [`GROUP`] at a time.
fn insert_keys(conn: &Connection, keys: &[Key]) -> rusqlite::Result<()> {
    static GROUP_SQL: LazyLock<String> = LazyLock::new(|| {
        let rows = vec!["(?, ?)"; GROUP].join(", ");
        format!("INSERT OR IGNORE INTO event_index (id_hash, event_rowid) VALUES {rows}")
    });
    let mut groups = keys.chunks_exact(GROUP);
    if groups.len() > 0 {
        let mut insert = conn.prepare_cached(&GROUP_SQL)?;
        for group in groups.by_ref() {
            let values = group.iter().flat_map(|(hash, rowid)| [hash, rowid]);
            insert.execute(rusqlite::params_from_iter(values))?;
        }
    }
    let rest = groups.remainder();
    if !rest.is_empty() {
        let mut insert = conn.prepare_cached(
            "INSERT OR IGNORE INTO event_index (id_hash, event_rowid) VALUES (?1, ?2)",
        )?;
        for (hash, rowid) in rest {
            insert.execute(params![hash, rowid])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Connection) {
        super::super::schema::scratch_store()
    }

    /// Inserts events `e<n>` for `ids` in one transaction, as the writer does.
    fn insert(conn: &mut Connection, writer: &IndexWriter, ids: std::ops::Range<usize>) {
        let tx = conn.transaction().unwrap();
        writer.begin(&tx).unwrap();
        for n in ids {
            insert_row(&tx, writer, &format!("e{n}"));
        }
        writer.before_commit(&tx).unwrap();
        tx.commit().unwrap();
        writer.after_commit(true);
    }

    fn insert_row(conn: &Connection, writer: &IndexWriter, id: &str) -> i64 {
        conn.execute(
            "INSERT INTO events (id, id_hash, type, ts, source, received_at, raw)
             VALUES (?1, ?2, 'x.y', 1, '\"fire\"', 1, '{}')",
            params![id, event_id_hash(id)],
        )
        .unwrap();
        let rowid = conn.last_insert_rowid();
        writer.inserted(event_id_hash(id), rowid);
        rowid
    }

    fn indexed(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM event_index", [], |r| r.get(0))
            .unwrap()
    }

    fn upto(conn: &Connection) -> i64 {
        conn.query_row("SELECT upto FROM event_index_upto", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn keys_go_in_by_groups_and_the_rest_one_by_one_skipping_those_in_the_table() {
        let (_dir, conn) = store();
        let stored = |conn: &Connection| -> Vec<Key> {
            conn.prepare("SELECT id_hash, event_rowid FROM event_index ORDER BY 1, 2")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        for count in [0, 1, GROUP - 1, GROUP, GROUP + 1, 3 * GROUP + 7] {
            conn.execute("DELETE FROM event_index", []).unwrap();
            let keys: Vec<Key> = (0..count as i64).map(|n| (n * 7 - 40, n)).collect();
            // Every third key is in the table already.
            for key in keys.iter().step_by(3) {
                insert_keys(&conn, std::slice::from_ref(key)).unwrap();
            }
            insert_keys(&conn, &keys).unwrap();
            let mut expected = keys.clone();
            expected.sort_unstable();
            assert_eq!(stored(&conn), expected, "{count} keys");
        }
    }

    #[test]
    fn events_are_found_from_memory_then_from_the_table_written_in_sorted_chunks() {
        let (_dir, mut conn) = store();
        let shared = Arc::new(EventIndex::load(&conn).unwrap());
        let writer = IndexWriter::new(shared.clone());
        // Gathered in memory: nothing in the table yet.
        insert(&mut conn, &writer, 0..FREEZE_AT);
        assert_eq!(indexed(&conn), 0);
        assert_eq!(shared.in_memory(), FREEZE_AT);
        assert!(find_event(&conn, &shared, "e7").unwrap().is_some());
        assert!(find_event(&conn, &shared, "nope").unwrap().is_none());
        // The set is full: frozen at the next batch, then written a chunk a batch.
        insert(&mut conn, &writer, FREEZE_AT..FREEZE_AT + 11);
        assert_eq!(indexed(&conn), CHUNK as i64, "one chunk with the batch");
        let mut batches = 0;
        while indexed(&conn) < FREEZE_AT as i64 {
            insert(&mut conn, &writer, 0..0);
            batches += 1;
        }
        assert_eq!(batches, FREEZE_AT / CHUNK - 1);
        assert_eq!(
            upto(&conn),
            FREEZE_AT as i64,
            "rowids up to the set's last are in the table"
        );
        assert_eq!(
            shared.in_memory(),
            11,
            "only the keys gathered since stay in memory"
        );
        for n in [0, 5, FREEZE_AT - 1, FREEZE_AT + 10] {
            let rowid = find_event(&conn, &shared, &format!("e{n}")).unwrap();
            assert_eq!(rowid, Some(n as i64 + 1), "e{n}");
        }
        // Reopened (as after a crash): what was not in the table is read back.
        let loaded = EventIndex::load(&conn).unwrap();
        assert_eq!(loaded.in_memory(), 11);
        for n in [3, FREEZE_AT + 10] {
            assert!(
                find_event(&conn, &loaded, &format!("e{n}"))
                    .unwrap()
                    .is_some()
            );
        }
    }

    #[test]
    fn a_failed_transaction_takes_its_keys_back_and_its_chunk_is_written_again() {
        let (_dir, mut conn) = store();
        let shared = Arc::new(EventIndex::load(&conn).unwrap());
        let writer = IndexWriter::new(shared.clone());
        insert(&mut conn, &writer, 0..FREEZE_AT);
        {
            let tx = conn.transaction().unwrap();
            writer.begin(&tx).unwrap();
            insert_row(&tx, &writer, "lost");
            writer.before_commit(&tx).unwrap();
            drop(tx); // rolled back
            writer.after_commit(false);
        }
        assert!(find_event(&conn, &shared, "lost").unwrap().is_none());
        assert_eq!(shared.in_memory(), FREEZE_AT, "the failed key is gone");
        assert_eq!(indexed(&conn), 0, "the chunk rolled back");
        insert(&mut conn, &writer, 0..0);
        assert_eq!(
            indexed(&conn),
            CHUNK as i64,
            "the same chunk, written again"
        );
    }

    #[test]
    fn events_another_process_wrote_are_found_and_indexed() {
        let (dir, mut conn) = store();
        let shared = Arc::new(EventIndex::load(&conn).unwrap());
        let writer = IndexWriter::new(shared.clone());
        insert(&mut conn, &writer, 0..3);
        // Another process (its own connection and memory) adds two events.
        let mut other = Connection::open(dir.path().join("zoomwire.db")).unwrap();
        let theirs = IndexWriter::new(Arc::new(EventIndex::load(&other).unwrap()));
        insert(&mut other, &theirs, 3..5);
        // A reader here finds them, and this writer then knows them.
        assert_eq!(find_event(&conn, &shared, "e4").unwrap(), Some(5));
        insert(&mut conn, &writer, 5..6);
        assert_eq!(find_event(&conn, &shared, "e5").unwrap(), Some(6));
        assert_eq!(shared.in_memory(), 6);
        // Flushed by this process, every one of them is in the table, and
        // found there once out of memory.
        flush_around(&mut conn, &writer, "", "");
        assert_eq!((indexed(&conn), upto(&conn)), (6, 6));
        insert(&mut conn, &writer, 0..0);
        assert_eq!(shared.in_memory(), 0);
        assert_found(&conn, &shared, 0..6);
    }

    /// Events `e<n>` for `ids`, inserted first, are found at rowid `n + 1`.
    fn assert_found(conn: &Connection, index: &EventIndex, ids: std::ops::Range<i64>) {
        for n in ids {
            let rowid = find_event(conn, index, &format!("e{n}")).unwrap();
            assert_eq!(rowid, Some(n + 1), "e{n}");
        }
    }

    #[test]
    fn keys_another_process_put_in_the_table_are_found_by_the_reader_and_the_writer() {
        let (dir, mut conn) = store();
        let shared = Arc::new(EventIndex::load(&conn).unwrap());
        let writer = IndexWriter::new(shared.clone());
        insert(&mut conn, &writer, 0..2);
        let reader = EventIndex::load(&conn).unwrap();
        // Another process adds events and puts their keys in the table.
        let mut other = Connection::open(dir.path().join("zoomwire.db")).unwrap();
        let theirs = IndexWriter::new(Arc::new(EventIndex::load(&other).unwrap()));
        insert(&mut other, &theirs, 2..5);
        flush_around(&mut other, &theirs, "", "");
        assert_eq!(indexed(&conn), 5);
        // This writer's lookups come after its transaction began.
        let tx = conn.transaction().unwrap();
        writer.begin(&tx).unwrap();
        assert_eq!(writer.find(&Statements::new(&tx), "e3").unwrap(), Some(4));
        drop(tx);
        // So does a reader with an index loaded before.
        assert_eq!(find_event(&conn, &reader, "e2").unwrap(), Some(3));
        // Reopened, the table's keys are known from the start.
        let loaded = EventIndex::load(&conn).unwrap();
        assert_eq!(loaded.in_memory(), 0, "all in the table");
        assert_found(&conn, &loaded, 0..5);
    }

    #[test]
    fn the_table_is_not_searched_for_a_key_never_held() {
        let (_dir, conn) = store();
        let loaded = EventIndex::load(&conn).unwrap();
        // A row and key that bypass this process (and `seen`): found only
        // by searching the table, which an index not loaded always does.
        conn.execute_batch(&format!(
            "INSERT INTO events (rowid, id, id_hash, type, ts, source, received_at, raw)
             VALUES (1, 'ghost', {hash}, 'x.y', 1, '\"fire\"', 1, '{{}}');
             INSERT INTO event_index VALUES ({hash}, 1);",
            hash = event_id_hash("ghost")
        ))
        .unwrap();
        let statements = Statements::new(&conn);
        assert_eq!(find(&statements, &loaded, &[], "ghost").unwrap(), None);
        let unloaded = EventIndex::default();
        assert_eq!(find(&statements, &unloaded, &[], "ghost").unwrap(), Some(1));
    }

    #[test]
    fn upto_never_stands_above_the_largest_rowid() {
        let (_dir, mut conn) = store();
        let shared = Arc::new(EventIndex::load(&conn).unwrap());
        let writer = IndexWriter::new(shared.clone());
        insert(&mut conn, &writer, 0..3);
        // A frozen set whose rows were all pruned before its last chunk.
        flush_around(
            &mut conn,
            &writer,
            "",
            "DELETE FROM events WHERE rowid >= 2",
        );
        assert_eq!(
            upto(&conn),
            3,
            "set before the delete in the same transaction"
        );
        conn.execute("UPDATE event_index_upto SET upto = 0", [])
            .unwrap();
        let loaded = Arc::new(EventIndex::load(&conn).unwrap());
        let writer = IndexWriter::new(loaded.clone());
        insert(&mut conn, &writer, 10..11);
        flush_around(&mut conn, &writer, "DELETE FROM events WHERE rowid > 1", "");
        assert_eq!(upto(&conn), 1, "capped at the largest rowid left");
    }

    /// One transaction of the writer: `before`, a flush of every key, `after`.
    fn flush_around(conn: &mut Connection, writer: &IndexWriter, before: &str, after: &str) {
        let tx = conn.transaction().unwrap();
        writer.begin(&tx).unwrap();
        tx.execute_batch(before).unwrap();
        writer.flush(&tx).unwrap();
        tx.execute_batch(after).unwrap();
        tx.commit().unwrap();
        writer.after_commit(true);
    }
}
