//! The writer's statements, each taken from the connection's cache once per
//! transaction instead of once per use.
//!
//! rusqlite's `prepare_cached` finds a statement by hashing its text in an
//! LRU map, and puts it back on drop by hashing it again (and resetting it).
//! A batch runs the same few statements for each of its events and runs: in
//! `writer_cost_harness` (44 events a batch, under callgrind) taking and
//! giving back cached statements was 13.6% of the writer's instructions,
//! about 1,500 a use. [`Statements`] keeps each statement it is asked for,
//! found by the address of its `'static` text, until it is dropped; the
//! writer drops it before the commit, so every statement is back in the
//! cache, reset, when the transaction ends.
//!
//! Kept by hand: rusqlite has no cheaper handle to a prepared statement than
//! `CachedStatement`, which borrows the connection, so something must hold
//! them for the transaction's span; this is that holder.

use std::cell::{OnceCell, RefCell, RefMut};
use std::ops::{Deref, DerefMut};

use rusqlite::{CachedStatement, Connection, Statement};

/// Distinct statements kept at once; a further one is taken from the cache
/// for each use, as before.
const SLOTS: usize = 16;

/// The statements of one transaction (or one read), kept until dropped.
pub(crate) struct Statements<'c> {
    conn: &'c Connection,
    kept: [OnceCell<(&'static str, RefCell<CachedStatement<'c>>)>; SLOTS],
}

impl<'c> Statements<'c> {
    pub fn new(conn: &'c Connection) -> Statements<'c> {
        Statements {
            conn,
            kept: [const { OnceCell::new() }; SLOTS],
        }
    }

    /// The statement for `sql`: the one kept for this text, prepared (from
    /// the cache) the first time. One asked for while the kept one is in use,
    /// or past [`SLOTS`], comes from the cache for this use only.
    pub fn get(&self, sql: &'static str) -> rusqlite::Result<Held<'_, 'c>> {
        for slot in &self.kept {
            match slot.get() {
                Some((text, statement)) if std::ptr::eq(*text, sql) => {
                    return match statement.try_borrow_mut() {
                        Ok(statement) => Ok(Held::Kept(statement)),
                        Err(_) => self.conn.prepare_cached(sql).map(Held::Once),
                    };
                }
                Some(_) => {}
                None => {
                    let statement = RefCell::new(self.conn.prepare_cached(sql)?);
                    let (_, statement) = slot.get_or_init(|| (sql, statement));
                    return Ok(Held::Kept(statement.borrow_mut()));
                }
            }
        }
        self.conn.prepare_cached(sql).map(Held::Once)
    }
}

/// A statement in use: a kept one, or one taken for a single use.
pub(crate) enum Held<'s, 'c> {
    Kept(RefMut<'s, CachedStatement<'c>>),
    Once(CachedStatement<'c>),
}

impl<'c> Deref for Held<'_, 'c> {
    type Target = Statement<'c>;

    fn deref(&self) -> &Statement<'c> {
        match self {
            Held::Kept(statement) => statement,
            Held::Once(statement) => statement,
        }
    }
}

impl<'c> DerefMut for Held<'_, 'c> {
    fn deref_mut(&mut self) -> &mut Statement<'c> {
        match self {
            Held::Kept(statement) => statement,
            Held::Once(statement) => statement,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSERT: &str = "INSERT INTO t (v) VALUES (?1)";
    const COUNT: &str = "SELECT count(*) FROM t";

    fn conn() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER)").unwrap();
        conn
    }

    fn count(statements: &Statements<'_>) -> i64 {
        statements
            .get(COUNT)
            .unwrap()
            .query_row([], |row| row.get(0))
            .unwrap()
    }

    #[test]
    fn a_statement_is_kept_and_runs_again_with_new_parameters() {
        let conn = conn();
        let statements = Statements::new(&conn);
        for v in 0..5 {
            statements.get(INSERT).unwrap().execute([v]).unwrap();
            assert_eq!(count(&statements), v + 1);
        }
        let first = statements.get(INSERT).unwrap();
        let kept = matches!(first, Held::Kept(_));
        drop(first);
        assert!(kept);
        assert_eq!(
            statements.kept.iter().filter(|s| s.get().is_some()).count(),
            2
        );
    }

    #[test]
    fn the_same_text_in_use_or_past_the_slots_is_taken_for_one_use() {
        let conn = conn();
        let statements = Statements::new(&conn);
        let outer = statements.get(COUNT).unwrap();
        let mut inner = statements.get(COUNT).unwrap();
        assert!(matches!(inner, Held::Once(_)));
        assert_eq!(inner.query_row([], |row| row.get::<_, i64>(0)).unwrap(), 0);
        drop((outer, inner));
        // More distinct texts than slots: each still runs.
        let texts: Vec<&'static str> = (0..SLOTS + 3)
            .map(|n| &*String::leak(format!("SELECT {n}")))
            .collect();
        for (n, text) in texts.iter().enumerate() {
            let got: i64 = statements
                .get(text)
                .unwrap()
                .query_row([], |row| row.get(0))
                .unwrap();
            assert_eq!(got, n as i64);
        }
    }

    #[test]
    fn dropped_statements_leave_the_transaction_free_to_commit() {
        let mut conn = conn();
        let tx = conn.transaction().unwrap();
        let statements = Statements::new(&tx);
        statements.get(INSERT).unwrap().execute([1]).unwrap();
        assert_eq!(count(&statements), 1);
        drop(statements);
        tx.commit().unwrap();
        let after: i64 = conn.query_row(COUNT, [], |row| row.get(0)).unwrap();
        assert_eq!(after, 1);
    }
}
