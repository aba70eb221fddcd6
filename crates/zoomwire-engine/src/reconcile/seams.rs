//! What reconciliation needs from the rest of the engine, as small traits:
//! whether an event id is already known ([`KnownEvents`], the journal's
//! dedupe window), where found events go ([`EventFeed`], the daemon's
//! intake channel, or the store for `zoomwire reconcile`), what Zoom may
//! have missed ([`MissedSource`], the REST finder), and the two times kept
//! in the state store per account ([`Marks`]).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::effects::state::StateStore;
use crate::event::Event;
use crate::journal::SqliteJournal;
use crate::journal::memory::MemoryJournal;
use crate::journal::postgres::PostgresJournal;
use crate::zoom::missed::{Candidate, FindError, MissedFinder, MissedKind, Window};

/// Whether the engine has already accepted an event with this id.
pub trait KnownEvents: Send + Sync + 'static {
    fn is_known<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, String>>;
}

impl KnownEvents for SqliteJournal {
    fn is_known<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, String>> {
        let journal = self.clone();
        let id = id.to_string();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || journal.is_duplicate(&id))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        })
    }
}

impl KnownEvents for PostgresJournal {
    fn is_known<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move { self.is_duplicate(id).await.map_err(|e| e.0) })
    }
}

impl KnownEvents for MemoryJournal {
    fn is_known<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, String>> {
        let known = self.is_duplicate(id);
        Box::pin(async move { Ok(known) })
    }
}

/// Where found events go.
pub trait EventFeed: Send + Sync + 'static {
    fn feed(&self, event: Event) -> BoxFuture<'_, Result<(), String>>;
}

/// The daemon's intake: waits while it is full, like any source.
impl EventFeed for mpsc::Sender<Event> {
    fn feed(&self, event: Event) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.send(event)
                .await
                .map_err(|_| "the engine stopped taking events".to_string())
        })
    }
}

/// What Zoom may have missed, by kind and window.
pub trait MissedSource: Send + Sync + 'static {
    fn find(
        &self,
        kind: MissedKind,
        window: Window,
    ) -> BoxFuture<'_, Result<Vec<Candidate>, FindError>>;
    /// The candidate's whole body (a recording's download token...).
    fn complete(&self, candidate: Candidate) -> BoxFuture<'_, Result<Value, FindError>>;
}

impl MissedSource for MissedFinder {
    fn find(
        &self,
        kind: MissedKind,
        window: Window,
    ) -> BoxFuture<'_, Result<Vec<Candidate>, FindError>> {
        Box::pin(MissedFinder::find(self, kind, window))
    }

    fn complete(&self, candidate: Candidate) -> BoxFuture<'_, Result<Value, FindError>> {
        Box::pin(MissedFinder::complete(self, candidate))
    }
}

/// The state store's "rule" under which the marks are kept.
pub const MARKS_RULE: &str = "__reconcile__";

/// An account's two marks in the state store: since when the engine has
/// watched it (set once), and until when it last did (saved every minute
/// while watching, and when a connection is lost or the engine stops).
pub struct Marks {
    store: Arc<dyn StateStore>,
    account: String,
}

impl Marks {
    pub fn new(store: Arc<dyn StateStore>, account: &str) -> Marks {
        Marks {
            store,
            account: account.to_string(),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{name}:{}", self.account)
    }

    async fn get(&self, name: &str) -> Option<DateTime<Utc>> {
        let store = self.store.clone();
        let key = self.key(name);
        let value = tokio::task::spawn_blocking(move || store.get(MARKS_RULE, &key))
            .await
            .ok()?
            .map_err(|error| tracing::warn!(error = %error, "cannot read a reconciliation mark"))
            .ok()??;
        DateTime::parse_from_rfc3339(value.as_str()?)
            .ok()
            .map(|at| at.with_timezone(&Utc))
    }

    async fn set(&self, name: &str, at: DateTime<Utc>) {
        let store = self.store.clone();
        let key = self.key(name);
        let value = Value::String(at.to_rfc3339());
        let saved =
            tokio::task::spawn_blocking(move || store.set(MARKS_RULE, &key, value, None)).await;
        if let Ok(Err(error)) = saved {
            tracing::warn!(account = %self.account, error = %error, "cannot save a reconciliation mark");
        }
    }

    /// Since when the account is watched; the first call saves now.
    pub async fn watching_since(&self) -> DateTime<Utc> {
        if let Some(since) = self.get("watching_since").await {
            return since;
        }
        let now = Utc::now();
        self.set("watching_since", now).await;
        now
    }

    /// Until when the account was last watched, by an earlier run too.
    pub async fn watched_until(&self) -> Option<DateTime<Utc>> {
        self.get("watched_until").await
    }

    pub async fn save_watched_until(&self, at: DateTime<Utc>) {
        self.set("watched_until", at).await;
    }
}
