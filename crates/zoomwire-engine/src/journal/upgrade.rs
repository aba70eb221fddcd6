//! One-time changes to a store's rows that SQL alone cannot make, run when
//! a store written by an older zoomwire is opened.
//!
//! Before schema version 3 an event's body was stored with Zoom's
//! `download_token` in it: those bodies get the token taken out and sealed
//! into `sealed_token`, as intake now does, in one transaction.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, params};
use secrecy::ExposeSecret;

use super::schema::SEALED_TOKENS_VERSION;
use super::seal::{SealKey, event_context};
use crate::event::take_download_token;

/// The schema version of the store at `path` before it is opened for
/// writing; 0 when there is no store yet (or it cannot be read, which the
/// writer's open then reports).
pub(crate) fn version_before_open(path: &Path) -> i64 {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    Connection::open_with_flags(path, flags)
        .and_then(|conn| conn.pragma_query_value(None, "user_version", |row| row.get(0)))
        .unwrap_or(0)
}

/// Whether a store at `version` needs [`seal_stored_tokens`].
pub(crate) fn needs_token_sealing(version: i64) -> bool {
    version > 0 && version < SEALED_TOKENS_VERSION
}

/// Takes the download token out of every stored body that has one, sealing
/// it; returns how many bodies changed. `secure_delete` is on meanwhile, so
/// the old bodies' bytes are overwritten, not left in free space.
pub(crate) fn seal_stored_tokens(conn: &mut Connection, seal: &SealKey) -> rusqlite::Result<usize> {
    conn.pragma_update(None, "secure_delete", true)?;
    let changed = seal_in_transaction(conn, seal);
    conn.pragma_update(None, "secure_delete", false)?;
    changed
}

fn seal_in_transaction(conn: &mut Connection, seal: &SealKey) -> rusqlite::Result<usize> {
    let tx = conn.transaction()?;
    let rows: Vec<(i64, String, String)> = tx
        .prepare("SELECT rowid, id, raw FROM events WHERE instr(raw, '\"download_token\"') > 0")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut changed = 0;
    {
        let mut update =
            tx.prepare("UPDATE events SET raw = ?2, sealed_token = ?3 WHERE rowid = ?1")?;
        for (rowid, id, raw) in rows {
            let Ok((body, Some(token))) = take_download_token(&raw) else {
                continue;
            };
            let sealed = seal.seal(&event_context(&id), token.expose_secret().as_bytes());
            update.execute(params![rowid, &*body, sealed])?;
            changed += 1;
        }
    }
    tx.commit()?;
    Ok(changed)
}
