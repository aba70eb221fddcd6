//! The PostgreSQL schema and its versioned migrations.
//!
//! Everything lives in the database schema `zoomwire`, so that the journal
//! can share a database with other applications without touching their
//! tables. The versions applied are rows of `zoomwire.schema_version`;
//! every node migrates at start, each migration in its own transaction
//! under an advisory lock, so several nodes starting together apply each
//! migration once. A database migrated by a newer zoomwire is refused.
//!
//! Times of history rows are bigint nanoseconds since the epoch, as in the
//! SQLite store, so that cursors and pages mean the same in both; the
//! times that decide between nodes (leases, heartbeats) are the server's
//! `timestamptz`, so that node clocks may drift.

use deadpool_postgres::Client;

/// The advisory lock taken while migrating ("zwir").
const MIGRATION_LOCK: i64 = 0x7a77_6972;

/// Migrations in order; the database's version is the number applied.
const MIGRATIONS: &[&str] = &[V1, V2, V3];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Runs that are not over: pending, running, or failed and waiting for
/// their next attempt. As in the SQLite store.
pub(crate) const UNFINISHED: &str =
    "(status IN ('pending', 'running') OR (status = 'failed' AND finished_at IS NULL))";

const V1: &str = "
CREATE TABLE zoomwire.events (
    id text PRIMARY KEY,
    type text NOT NULL,
    ts bigint NOT NULL,
    source text NOT NULL,
    received_at bigint NOT NULL,
    raw text NOT NULL
);
CREATE INDEX events_received ON zoomwire.events (received_at);

CREATE TABLE zoomwire.dedupe (
    id text PRIMARY KEY,
    received_at bigint NOT NULL,
    expires_at bigint NOT NULL
);
CREATE INDEX dedupe_expires ON zoomwire.dedupe (expires_at);

-- `seq` is the order runs were written in; `node` the node that holds the
-- run (NULL: any node may take it), `claim` grows each time another node
-- takes it, so that the node it was taken from can no longer record it;
-- `waiting`: a pending run of a single/queued/restart rule whose node asked
-- for its key's turn and was told to wait (the first in its node's line).
CREATE TABLE zoomwire.runs (
    id text PRIMARY KEY,
    seq bigserial NOT NULL,
    rule text NOT NULL,
    event_id text NOT NULL,
    event_type text NOT NULL,
    key text,
    status text NOT NULL,
    attempt integer NOT NULL,
    error text,
    output text,
    created_at bigint NOT NULL,
    started_at bigint,
    finished_at bigint,
    updated_at bigint NOT NULL,
    node text,
    claim bigint NOT NULL DEFAULT 1,
    waiting boolean NOT NULL DEFAULT false
);
CREATE INDEX runs_created ON zoomwire.runs (created_at, id);
CREATE INDEX runs_rule ON zoomwire.runs (rule, created_at, id);
CREATE INDEX runs_status ON zoomwire.runs (status, created_at, id);
CREATE INDEX runs_rule_status ON zoomwire.runs (rule, status, created_at, id);
CREATE INDEX runs_event ON zoomwire.runs (event_id);
CREATE INDEX runs_unfinished ON zoomwire.runs (seq)
    WHERE status IN ('pending', 'running') OR (status = 'failed' AND finished_at IS NULL);

CREATE TABLE zoomwire.effects (
    run_id text NOT NULL,
    seq integer NOT NULL,
    attempt integer NOT NULL,
    name text NOT NULL,
    args text NOT NULL,
    ok boolean NOT NULL,
    result text NOT NULL,
    started_at bigint NOT NULL,
    latency_ms double precision NOT NULL,
    replayed boolean NOT NULL,
    recorded_at bigint NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE zoomwire.logs (
    run_id text NOT NULL,
    attempt integer NOT NULL,
    idx integer NOT NULL,
    level text NOT NULL,
    message text NOT NULL,
    at bigint NOT NULL,
    PRIMARY KEY (run_id, attempt, idx)
);

CREATE TABLE zoomwire.state (
    rule text NOT NULL,
    key text NOT NULL,
    value text NOT NULL,
    expires_at bigint,
    updated_at bigint NOT NULL,
    PRIMARY KEY (rule, key)
);
CREATE INDEX state_expires ON zoomwire.state (expires_at) WHERE expires_at IS NOT NULL;

-- The processes of the cluster: a node id is stable across restarts, its
-- incarnation is one process.
CREATE TABLE zoomwire.nodes (
    id text PRIMARY KEY,
    incarnation text NOT NULL,
    started_at timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    stopped_at timestamptz,
    admin_addr text
);

-- One row per lease (an account's subscription, the scheduler, the
-- pruner); `epoch` grows on every change of holder.
CREATE TABLE zoomwire.leases (
    name text PRIMARY KEY,
    node text NOT NULL,
    incarnation text NOT NULL,
    epoch bigint NOT NULL,
    acquired_at timestamptz NOT NULL,
    renewed_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
";

/// As the SQLite store's versions 3 and 4: effects written as started
/// before they are performed (a row left behind when a run resumes is an
/// effect in doubt; the effect's record replaces it), the records that say
/// so, and what the journal keeps sealed (`journal/seal.rs`): an event's
/// download token, taken out of its body, and an effect's result before
/// redaction, for replay.
const V2: &str = "
CREATE TABLE zoomwire.effect_starts (
    run_id text NOT NULL,
    seq integer NOT NULL,
    name text NOT NULL,
    args text NOT NULL,
    started_at bigint NOT NULL,
    PRIMARY KEY (run_id, seq)
);
ALTER TABLE zoomwire.effects ADD COLUMN in_doubt boolean NOT NULL DEFAULT false;
ALTER TABLE zoomwire.events ADD COLUMN sealed_token bytea;
ALTER TABLE zoomwire.effects ADD COLUMN sealed_result bytea;
";

/// The places of a rule and key, kept by the database: a run that starts
/// takes a place number below its rule's limit (1 for `single`, `queued`
/// and `restart`, `max_runs` for `parallel`), and no two runs that are not
/// over hold the same place of one rule and key, whichever nodes run them.
const V3: &str = "
ALTER TABLE zoomwire.runs ADD COLUMN place integer;
CREATE UNIQUE INDEX runs_places ON zoomwire.runs (rule, coalesce(key, ''), place)
    WHERE place IS NOT NULL
      AND (status = 'running' OR (status = 'failed' AND finished_at IS NULL));
";

/// Why the schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "the database was migrated by a newer zoomwire (schema version {found}, this build knows up to {supported}): upgrade zoomwire"
    )]
    TooNew { found: i64, supported: i64 },
    #[error("{0}")]
    Postgres(#[from] tokio_postgres::Error),
}

/// Applies the migrations the database lacks.
pub(crate) async fn migrate(client: &mut Client) -> Result<(), MigrateError> {
    loop {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE SCHEMA IF NOT EXISTS zoomwire;
             CREATE TABLE IF NOT EXISTS zoomwire.schema_version (
                 version bigint PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );",
        )
        .await?;
        let version: i64 = tx
            .query_one(
                "SELECT coalesce(max(version), 0) FROM zoomwire.schema_version",
                &[],
            )
            .await?
            .get(0);
        if version > SCHEMA_VERSION {
            return Err(MigrateError::TooNew {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        let Some(sql) = usize::try_from(version)
            .ok()
            .and_then(|applied| MIGRATIONS.get(applied))
        else {
            tx.commit().await?;
            return Ok(());
        };
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO zoomwire.schema_version (version) VALUES ($1)",
            &[&(version + 1)],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version = version + 1, "postgres journal schema migrated");
    }
}
