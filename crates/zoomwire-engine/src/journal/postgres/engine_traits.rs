//! The PostgreSQL journal behind the engine's seams: [`Journal`] (events
//! and runs), [`EffectObserver`] (each effect as it completes),
//! [`StateStore`] (rule state) and [`RunHistory`] (the admin API and page);
//! reconciliation's `KnownEvents` is in `reconcile/seams.rs`.
//!
//! As with SQLite, effect marks, effect records and state writes come from
//! sandbox threads and block until committed, so an effect is written as
//! started before it is made and its record is durable before the next
//! one; writes of one run land in the order they were made.

use std::time::Duration;

use chrono::Utc;
use serde_json::Value;

use super::{PostgresJournal, now, reads, writes};
use crate::effects::BoxFuture;
use crate::effects::gateway::{EffectObserver, EffectRecord, EffectStart, SavedWait};
use crate::effects::state::{StateError, StateStore};
use crate::engine::journal::{Journal, JournalError, RunRecord, UnfinishedRun};
use crate::event::Event;
use crate::journal::RequeueOutcome;
use crate::journal::codec::{duration_nanos, to_json, to_nanos};
use crate::journal::history::{
    HistoryError, RuleActivity, RunHistory, RunPage, RunQuery, RunTrace, TraceQuery,
};
use crate::journal::ops::EventRow;

impl PostgresJournal {
    /// Records `run` after its earlier writes; returns the write's task.
    fn write_run(&self, run: &RunRecord) -> tokio::task::JoinHandle<Result<(), JournalError>> {
        let (db, record, claim) = (self.db(), run.clone(), self.claim_of(&run.id));
        self.write_in_order(&run.id, async move {
            db.patiently(|| writes::record_run(&db, &record, claim, now()))
                .await
        })
    }

    /// The run is over (or never will be here): its claim is no longer needed.
    fn after_record(&self, run: &RunRecord) {
        if run.status.is_finished() {
            self.forget_claim(&run.id);
        }
    }

    /// Ends a run that cannot resume, so it shows as dead instead of vanishing.
    async fn give_up(&self, run: &RunRecord, reason: &str) -> Result<(), JournalError> {
        let error = format!("cannot resume after a restart: {reason}");
        tracing::error!(run = %run.id, rule = %run.rule, error = %error, "run marked dead");
        let (db, id) = (self.db(), run.id.clone());
        self.forget_claim(&run.id);
        self.inner
            .bridge
            .run(async move {
                db.patiently(|| writes::mark_dead(&db, &id, &error, now()))
                    .await
            })
            .await
    }
}

impl PostgresJournal {
    /// Takes the unfinished runs this node may resume (all, or those
    /// `among` names), with their events; a run whose event cannot be had
    /// is given up (marked dead).
    fn claim_resumable(
        &self,
        among: Option<Vec<String>>,
    ) -> BoxFuture<'_, Result<Vec<UnfinishedRun>, JournalError>> {
        let db = self.db();
        Box::pin(async move {
            let claimed = self
                .inner
                .bridge
                .run(async move { writes::claim_unfinished(&db, now(), among.as_deref()).await })
                .await?;
            let mut unfinished = Vec::with_capacity(claimed.len());
            for taken in claimed {
                self.set_claim(&taken.run.id, taken.claim);
                if let Some(from) = &taken.taken_from {
                    metrics::counter!("zoomwire_runs_taken_over_total").increment(1);
                    tracing::info!(run = %taken.run.id, rule = %taken.run.rule, from = %from, "run taken over from a node gone silent or stopped");
                }
                let seal = &self.inner.db.seal;
                match taken.event.map(|event| event.into_event(seal)) {
                    Some(Ok(event)) => unfinished.push(UnfinishedRun {
                        run: taken.run,
                        event,
                        in_doubt: taken.in_doubt,
                    }),
                    Some(Err(error)) => self.give_up(&taken.run, &error.0).await?,
                    None => {
                        self.give_up(&taken.run, "its event is no longer in the store")
                            .await?
                    }
                }
            }
            Ok(unfinished)
        })
    }
}

impl EffectObserver for PostgresJournal {
    /// Durable on `Ok`: blocks the sandbox thread until the mark is
    /// committed, after the run's earlier writes. Refused when this node no
    /// longer holds the run (another node took it over): the effect is not
    /// made.
    fn effect_starting(&self, run_id: &str, start: &EffectStart) -> Result<(), String> {
        let (db, id, copy, claim) = (
            self.db(),
            run_id.to_string(),
            start.clone(),
            self.claim_of(run_id),
        );
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        drop(self.write_in_order(run_id, async move {
            let result = db
                .patiently(|| writes::start_effect(&db, &id, &copy, claim))
                .await;
            let _ = sender.send(result);
            Ok(())
        }));
        receiver
            .recv()
            .unwrap_or_else(|_| {
                Err(JournalError(
                    "the postgres journal stopped before saving".into(),
                ))
            })
            .map_err(|error| {
                metrics::counter!("zoomwire_journal_errors_total").increment(1);
                error.0
            })
    }

    /// Durable on return: blocks the sandbox thread until the record is committed.
    fn effect_completed(&self, run_id: &str, record: &EffectRecord) {
        // A failed write is logged by the wait; a caller that waits here has no
        // next effect of its own to refuse.
        let _ = self.effect_completed_later(run_id, record)();
    }

    fn effect_completed_later(&self, run_id: &str, record: &EffectRecord) -> SavedWait {
        let (db, id, copy, claim) = (
            self.db(),
            run_id.to_string(),
            record.clone(),
            self.claim_of(run_id),
        );
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        // Its task runs without being awaited: the answer comes on the channel.
        drop(self.write_in_order(run_id, async move {
            let result = db
                .patiently(|| writes::record_effect(&db, &id, &copy, claim, now()))
                .await;
            let _ = sender.send(result);
            Ok(())
        }));
        let (run_id, name, seq) = (run_id.to_string(), record.name.clone(), record.seq);
        Box::new(move || {
            let result = receiver.recv().unwrap_or_else(|_| {
                Err(JournalError(
                    "the postgres journal stopped before saving".into(),
                ))
            });
            result.map_err(|error| {
                metrics::counter!("zoomwire_journal_errors_total").increment(1);
                tracing::error!(
                    run = %run_id, effect = %name, seq, error = %error,
                    "effect record not saved: the run makes no further effect"
                );
                error.0
            })
        })
    }
}

impl Journal for PostgresJournal {
    fn accept_event_with_runs<'a>(
        &'a self,
        event: &'a Event,
        runs: &'a [RunRecord],
    ) -> BoxFuture<'a, Result<bool, JournalError>> {
        let acceptance = writes::Acceptance {
            event: EventRow::new(event),
            runs: runs.to_vec(),
        };
        Box::pin(async move {
            let stopped = || JournalError("the postgres journal stopped".into());
            let (answer, answered) = tokio::sync::oneshot::channel();
            self.inner
                .intake
                .send((acceptance, answer))
                .await
                .map_err(|_| stopped())?;
            let fresh = answered.await.map_err(|_| stopped())??;
            if fresh {
                for run in runs.iter().filter(|r| !r.status.is_finished()) {
                    self.set_claim(&run.id, 1);
                }
            } else {
                metrics::counter!("zoomwire_events_duplicate_total").increment(1);
            }
            Ok(fresh)
        })
    }

    fn record_run<'a>(&'a self, run: &'a RunRecord) -> BoxFuture<'a, Result<(), JournalError>> {
        let write = self.write_run(run);
        Box::pin(async move {
            let written = write
                .await
                .map_err(|e| JournalError(format!("the postgres journal's task failed: {e}")))?;
            self.after_record(run);
            written
        })
    }

    fn queue_run(&self, run: &RunRecord) {
        let write = self.write_run(run);
        let (run_id, journal) = (run.id.clone(), self.clone());
        let finished = run.status.is_finished();
        self.inner.bridge.spawn(async move {
            match write.await {
                Ok(Ok(())) if finished => journal.forget_claim(&run_id),
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    metrics::counter!("zoomwire_journal_errors_total").increment(1);
                    tracing::error!(run = %run_id, error = %error, "run record not saved");
                }
                Err(_) => {}
            }
        });
    }

    /// The runs this node may resume, taken: its own left unfinished, those
    /// of nodes gone silent or stopped, and those `zoomwire runs retry` put
    /// back; in the order their events arrived.
    fn unfinished_runs(&self) -> BoxFuture<'_, Result<Vec<UnfinishedRun>, JournalError>> {
        self.claim_resumable(None)
    }

    /// The same, among the runs `ids` names only.
    fn unfinished_runs_among<'a>(
        &'a self,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<UnfinishedRun>, JournalError>> {
        self.claim_resumable(Some(ids.to_vec()))
    }

    fn keeps_events(&self) -> bool {
        true
    }

    /// A plain read: unlike [`Journal::unfinished_runs_among`], it claims nothing.
    fn stored_event<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Event>, JournalError>> {
        let (db, id) = (self.db(), id.to_string());
        Box::pin(async move {
            let stored = self
                .inner
                .bridge
                .run(async move {
                    let client = db.client().await?;
                    reads::stored_event(&db, &client, &id).await
                })
                .await?;
            stored
                .map(|stored| stored.into_event(&self.inner.db.seal))
                .transpose()
        })
    }

    /// Asked by every run before it starts: see `writes::claim_start`.
    fn claim_start<'a>(
        &'a self,
        run: &'a RunRecord,
        places: u32,
    ) -> BoxFuture<'a, Result<bool, JournalError>> {
        let (db, record, claim) = (self.db(), run.clone(), self.claim_of(&run.id));
        Box::pin(async move {
            let started = self
                .inner
                .bridge
                .run(async move { writes::claim_start(&db, &record, places, claim, now()).await })
                .await?;
            metrics::counter!("zoomwire_run_claims_total", "outcome" => if started { "started" } else { "busy" })
                .increment(1);
            Ok(started)
        })
    }

    fn unfinished_run_ids(&self) -> BoxFuture<'_, Result<Vec<String>, JournalError>> {
        let db = self.db();
        Box::pin(async move {
            self.inner
                .bridge
                .run(async move { reads::claimable_ids(&db).await })
                .await
        })
    }
}

impl StateStore for PostgresJournal {
    fn get(&self, rule: &str, key: &str) -> Result<Option<Value>, StateError> {
        let (db, rule, key) = (self.db(), rule.to_string(), key.to_string());
        self.inner
            .bridge
            .block(async move { reads::state_value(&db, &rule, &key, now()).await })
            .map_err(|e| StateError::Store(e.0))
    }

    /// Durable on return, like effect records.
    fn set(
        &self,
        rule: &str,
        key: &str,
        value: Value,
        ttl: Option<Duration>,
    ) -> Result<(), StateError> {
        let expires_at = ttl.map(|ttl| to_nanos(Utc::now()).saturating_add(duration_nanos(ttl)));
        let (db, rule, key, value) = (
            self.db(),
            rule.to_string(),
            key.to_string(),
            to_json(&value),
        );
        let max_keys = self.inner.db.max_state_keys;
        let named = rule.clone();
        let stored = self
            .inner
            .bridge
            .block(
                async move { writes::set_state(&db, &rule, &key, &value, expires_at, now()).await },
            )
            .map_err(|e| StateError::Store(e.0))?;
        if !stored {
            return Err(StateError::Full {
                rule: named,
                max_keys,
            });
        }
        Ok(())
    }
}

impl RunHistory for PostgresJournal {
    fn list_runs(&self, query: &RunQuery) -> Result<RunPage, HistoryError> {
        Ok(self.runs_page(query)?)
    }

    fn run_trace(&self, id: &str, query: &TraceQuery) -> Result<Option<RunTrace>, HistoryError> {
        Ok(PostgresJournal::run_trace(self, id, query)?)
    }

    fn rule_activity(
        &self,
        rule: &str,
        since: chrono::DateTime<Utc>,
        recent: usize,
    ) -> Result<RuleActivity, HistoryError> {
        Ok(PostgresJournal::rule_activity(self, rule, since, recent)?)
    }

    fn retry_run<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<RequeueOutcome, HistoryError>> {
        Box::pin(async move { Ok(self.requeue_run(id).await?) })
    }
}
