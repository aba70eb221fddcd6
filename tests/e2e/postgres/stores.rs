//! One journal behind both stores, for tests that must hold on each: a
//! SQLite file in a temporary folder, or a fresh database on the test
//! PostgreSQL server. [`both!`] writes a test once and runs it on each.

use std::time::Duration;

use zoomwire_engine::effects::gateway::{EffectObserver, EffectRecord, EffectStart};
use zoomwire_engine::effects::state::StateStore;
use zoomwire_engine::engine::journal::{Journal, RunRecord, UnfinishedRun};
use zoomwire_engine::event::Event;
use zoomwire_engine::journal::history::RunHistory;
use zoomwire_engine::journal::postgres::{DatabaseTarget, PostgresJournal, PostgresOptions};
use zoomwire_engine::journal::{
    JournalOptions, PruneReport, RequeueOutcome, RunDetail, RunFilter, RunSummary, SqliteJournal,
    StoreCounts,
};

use crate::support::postgres as pg;

/// Which store a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// A journal of either kind, with what it needs to be opened again.
pub enum Store {
    Sqlite {
        dir: tempfile::TempDir,
        options: JournalOptions,
        journal: SqliteJournal,
    },
    Postgres {
        database: pg::TestDatabase,
        /// The node's data folder, where its seal key stays across reopening.
        data: tempfile::TempDir,
        options: PostgresOptions,
        journal: PostgresJournal,
    },
}

/// The options of these tests: no background pruning.
pub fn options() -> JournalOptions {
    JournalOptions {
        prune_interval: None,
        ..JournalOptions::default()
    }
}

pub fn target(url: &str) -> DatabaseTarget {
    DatabaseTarget::parse(&url.to_string().into()).expect("a valid URL")
}

/// The PostgreSQL journal of node `node` on `database`.
pub async fn postgres(
    database: &pg::TestDatabase,
    node: &str,
    limits: JournalOptions,
) -> PostgresJournal {
    let options = PostgresOptions {
        node: node.into(),
        pool_size: 4,
        node_timeout: Duration::from_secs(10),
        limits,
        seal_dir: None,
    };
    PostgresJournal::open(&target(&database.url()), options)
        .await
        .expect("the postgres journal opens")
}

impl Store {
    /// A new store of `kind`; `None` when PostgreSQL is not on this machine.
    pub async fn open(kind: Kind, options: JournalOptions) -> Option<Store> {
        match kind {
            Kind::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let journal = SqliteJournal::open(dir.path(), options.clone()).unwrap();
                Some(Store::Sqlite {
                    dir,
                    options,
                    journal,
                })
            }
            Kind::Postgres => {
                let database = pg::shared()?.database();
                let data = tempfile::tempdir().unwrap();
                let options = PostgresOptions {
                    node: "node-a".into(),
                    pool_size: 4,
                    node_timeout: Duration::from_secs(10),
                    limits: options,
                    seal_dir: Some(data.path().to_path_buf()),
                };
                let journal = PostgresJournal::open(&target(&database.url()), options.clone())
                    .await
                    .expect("the postgres journal opens");
                Some(Store::Postgres {
                    database,
                    data,
                    options,
                    journal,
                })
            }
        }
    }

    /// Closes the journal and opens the same store again, as a restarted
    /// process would (the same node, for PostgreSQL).
    pub async fn reopen(self) -> Store {
        match self {
            Store::Sqlite {
                dir,
                options,
                journal,
            } => {
                drop(journal);
                let journal = SqliteJournal::open(dir.path(), options.clone()).unwrap();
                Store::Sqlite {
                    dir,
                    options,
                    journal,
                }
            }
            Store::Postgres {
                database,
                data,
                options,
                journal,
            } => {
                drop(journal);
                let journal = PostgresJournal::open(&target(&database.url()), options.clone())
                    .await
                    .unwrap();
                Store::Postgres {
                    database,
                    data,
                    options,
                    journal,
                }
            }
        }
    }

    pub fn journal(&self) -> &dyn Journal {
        match self {
            Store::Sqlite { journal, .. } => journal,
            Store::Postgres { journal, .. } => journal,
        }
    }

    pub fn state(&self) -> &dyn StateStore {
        match self {
            Store::Sqlite { journal, .. } => journal,
            Store::Postgres { journal, .. } => journal,
        }
    }

    pub fn history(&self) -> &dyn RunHistory {
        match self {
            Store::Sqlite { journal, .. } => journal,
            Store::Postgres { journal, .. } => journal,
        }
    }

    pub async fn accept(&self, event: &Event) -> bool {
        self.journal().accept_event(event).await.unwrap()
    }

    pub async fn record(&self, run: &RunRecord) {
        self.journal().record_run(run).await.unwrap()
    }

    pub fn effect_completed(&self, run_id: &str, record: &EffectRecord) {
        match self {
            Store::Sqlite { journal, .. } => journal.effect_completed(run_id, record),
            Store::Postgres { journal, .. } => journal.effect_completed(run_id, record),
        }
    }

    pub fn effect_starting(&self, run_id: &str, start: &EffectStart) -> Result<(), String> {
        match self {
            Store::Sqlite { journal, .. } => journal.effect_starting(run_id, start),
            Store::Postgres { journal, .. } => journal.effect_starting(run_id, start),
        }
    }

    /// The folder holding the store's seal key (`seal.key`).
    pub fn data_dir(&self) -> &std::path::Path {
        match self {
            Store::Sqlite { dir, .. } => dir.path(),
            Store::Postgres { data, .. } => data.path(),
        }
    }

    pub async fn unfinished(&self) -> Vec<UnfinishedRun> {
        self.journal().unfinished_runs().await.unwrap()
    }

    pub fn get_run(&self, id: &str) -> Option<RunDetail> {
        match self {
            Store::Sqlite { journal, .. } => journal.get_run(id),
            Store::Postgres { journal, .. } => journal.get_run(id),
        }
        .unwrap()
    }

    pub fn get_event(&self, id: &str) -> Option<Event> {
        match self {
            Store::Sqlite { journal, .. } => journal.get_event(id),
            Store::Postgres { journal, .. } => journal.get_event(id),
        }
        .unwrap()
    }

    pub fn list_runs(&self, filter: RunFilter) -> Vec<RunSummary> {
        match self {
            Store::Sqlite { journal, .. } => journal.list_runs(filter),
            Store::Postgres { journal, .. } => journal.list_runs(filter),
        }
        .unwrap()
    }

    pub async fn requeue(&self, id: &str) -> RequeueOutcome {
        match self {
            Store::Sqlite { journal, .. } => journal.requeue_run(id).await,
            Store::Postgres { journal, .. } => journal.requeue_run(id).await,
        }
        .unwrap()
    }

    pub async fn prune(&self) -> PruneReport {
        match self {
            Store::Sqlite { journal, .. } => {
                let journal = journal.clone();
                tokio::task::spawn_blocking(move || journal.prune())
                    .await
                    .unwrap()
            }
            Store::Postgres { journal, .. } => journal.prune().await,
        }
        .unwrap()
    }

    pub async fn counts(&self) -> StoreCounts {
        match self {
            Store::Sqlite { journal, .. } => journal.counts(),
            Store::Postgres { journal, .. } => journal.counts().await,
        }
        .unwrap()
    }

    pub async fn is_duplicate(&self, id: &str) -> bool {
        match self {
            Store::Sqlite { journal, .. } => journal.is_duplicate(id),
            Store::Postgres { journal, .. } => journal.is_duplicate(id).await,
        }
        .unwrap()
    }
}

/// `both!(name, |kind| async move { ... })`: the test on SQLite, and on
/// PostgreSQL (skipped when it is not installed, outside CI).
macro_rules! both {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                ($body)(crate::postgres::stores::Kind::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if crate::support::postgres::shared().is_none() {
                    return;
                }
                ($body)(crate::postgres::stores::Kind::Postgres).await;
            }
        }
    };
}

pub(crate) use both;
