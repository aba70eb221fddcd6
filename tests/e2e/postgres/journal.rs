//! The journal's behaviour, the same on SQLite and on PostgreSQL:
//! deduplication, events with their runs, resuming unfinished runs with
//! their effects, dead letters and requeue, redacted details, run history
//! in pages, pruning, rule state and its cap, effects in doubt, and the
//! sealed results a resumed run replays.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;
use zoomwire_engine::effects::EffectError;
use zoomwire_engine::effects::gateway::{EffectRecord, EffectStart, LogLine};
use zoomwire_engine::effects::state::StateError;
use zoomwire_engine::engine::journal::{RunRecord, RunStatus};
use zoomwire_engine::event::{Event, Source};
use zoomwire_engine::journal::history::{RunQuery, TraceQuery};
use zoomwire_engine::journal::{JournalOptions, RequeueOutcome, RunFilter};

use crate::postgres::stores::{Kind, Store, both, options};

const DAY: Duration = Duration::from_secs(24 * 3600);

pub fn event(n: u64) -> Event {
    Event::from_value(
        &json!({
            "event": "meeting.started",
            "event_ts": 1_732_000_000_000u64 + n,
            "payload": {"account_id": "acc", "object": {"uuid": format!("uuid-{n}"), "topic": "Sync"}}
        }),
        Source::Websocket("default".into()),
    )
    .unwrap()
}

fn received(mut event: Event, at: DateTime<Utc>) -> Event {
    event.received_at = at;
    event
}

pub fn run(id: &str, event: &Event, status: RunStatus, created_at: DateTime<Utc>) -> RunRecord {
    RunRecord {
        id: id.into(),
        rule: "rule-a".into(),
        event_id: event.id.clone(),
        event_type: event.event_type.clone(),
        key: None,
        status,
        attempt: 1,
        error: None,
        effects: vec![],
        logs: vec![],
        output: None,
        created_at,
        started_at: None,
        finished_at: status.is_finished().then_some(created_at),
    }
}

pub fn effect(seq: u32, text: &str) -> EffectRecord {
    EffectRecord {
        seq,
        name: "slack.post".into(),
        args: json!({"channel": "#ops", "text": text}),
        result: Ok(json!({"ok": true, "ts": format!("1.{seq}")})),
        started_at: Utc::now(),
        latency_ms: 12.5,
        replayed: false,
        in_doubt: false,
        unredacted: None,
    }
}

fn ago(duration: Duration) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::from_std(duration).unwrap()
}

async fn open(kind: Kind) -> Store {
    Store::open(kind, options()).await.expect("the store opens")
}

both!(
    duplicates_within_the_window_are_dropped_and_later_copies_accepted,
    |kind| async move {
        let store = Store::open(
            kind,
            JournalOptions {
                dedupe_window: Duration::from_secs(3600),
                ..options()
            },
        )
        .await
        .unwrap();
        let first = received(event(1), ago(Duration::from_secs(7200)));
        assert!(store.accept(&first).await);
        let within = received(event(1), ago(Duration::from_secs(7000)));
        assert!(!store.accept(&within).await);
        let after = received(event(1), Utc::now());
        assert!(store.accept(&after).await, "past the window");
        assert!(store.accept(&event(2)).await);
        assert!(store.is_duplicate(&event(2).id).await);
        assert!(!store.is_duplicate(&event(3).id).await);
        let store = store.reopen().await;
        assert!(
            !store.accept(&event(2)).await,
            "remembered across a restart"
        );
        let counts = store.counts().await;
        // SQLite's event rows are their own dedupe entries; PostgreSQL keeps a row apart.
        let kept_apart = if kind == Kind::Sqlite { 0 } else { 2 };
        assert_eq!((counts.events, counts.dedupe), (2, kept_apart));
    }
);

both!(
    an_event_is_written_with_its_runs_and_a_duplicate_writes_neither,
    |kind| async move {
        let store = open(kind).await;
        let trigger = event(1);
        let runs = vec![
            run("r1", &trigger, RunStatus::Pending, Utc::now()),
            run("r2", &trigger, RunStatus::Skipped, Utc::now()),
        ];
        assert!(
            store
                .journal()
                .accept_event_with_runs(&trigger, &runs)
                .await
                .unwrap()
        );
        let again = vec![run("r3", &trigger, RunStatus::Pending, Utc::now())];
        assert!(
            !store
                .journal()
                .accept_event_with_runs(&trigger, &again)
                .await
                .unwrap()
        );
        let ids: Vec<String> = store
            .list_runs(RunFilter::default())
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids.len(), 2);
        assert!(
            store.get_run("r3").is_none(),
            "the duplicate's run was not written"
        );
        assert_eq!(store.get_run("r2").unwrap().run.status, RunStatus::Skipped);
    }
);

both!(
    unfinished_runs_come_back_after_a_restart_oldest_first_with_their_events,
    |kind| async move {
        let store = open(kind).await;
        let base = ago(Duration::from_secs(600));
        let at = |s: i64| base + chrono::Duration::seconds(s);
        let events: Vec<Event> = (0..4).map(|n| received(event(n), at(n as i64))).collect();
        for event in &events {
            store.accept(event).await;
        }
        let mut running = run("running", &events[0], RunStatus::Running, at(1));
        running.attempt = 2;
        running.effects = vec![effect(1, "one")];
        running.logs = vec![LogLine {
            level: "info".into(),
            message: "started".into(),
            at: at(1),
        }];
        let pending = run("pending", &events[1], RunStatus::Pending, at(2));
        let mut retrying = run("retrying", &events[2], RunStatus::Failed, at(3));
        retrying.finished_at = None;
        retrying.error = Some("slack.post: 503".into());
        let done = run("done", &events[3], RunStatus::Succeeded, at(0));
        let orphan = run("orphan", &event(99), RunStatus::Pending, at(4));
        for record in [&pending, &done, &retrying, &running, &orphan] {
            store.record(record).await;
        }
        store.effect_completed("running", &effect(2, "two"));
        let store = store.reopen().await;

        let unfinished = store.unfinished().await;
        let ids: Vec<_> = unfinished.iter().map(|u| u.run.id.as_str()).collect();
        assert_eq!(ids, ["running", "pending", "retrying"]);
        let first = &unfinished[0];
        assert_eq!(first.run.attempt, 2);
        assert_eq!(first.run.created_at, at(1));
        assert_eq!(first.run.logs.len(), 1);
        assert_eq!(first.run.effects.len(), 2);
        assert_eq!(first.run.effects[1].args["text"], "two");
        assert_eq!(first.event.id, events[0].id);
        assert_eq!(&*first.event.raw, &*events[0].raw);
        assert_eq!(first.event.received_at, events[0].received_at);
        assert_eq!(first.event.source, events[0].source);
        // The resumed run can be recorded by the process that took it.
        let mut finished = first.run.clone();
        finished.status = RunStatus::Succeeded;
        finished.finished_at = Some(Utc::now());
        store.record(&finished).await;

        // The run whose event is gone is not dropped silently: it is dead, with a reason.
        let orphan = store.get_run("orphan").unwrap();
        assert_eq!(orphan.run.status, RunStatus::Dead);
        assert!(
            orphan
                .run
                .error
                .unwrap()
                .contains("event is no longer in the store"),
            "explains why"
        );
    }
);

both!(
    a_dead_run_is_listed_and_requeued_with_its_effects_kept,
    |kind| async move {
        let store = open(kind).await;
        let trigger = event(1);
        store.accept(&trigger).await;
        let mut dead = run("run-dead", &trigger, RunStatus::Dead, Utc::now());
        dead.attempt = 5;
        dead.error = Some("slack.post: 503 Service Unavailable".into());
        let mut failed_post = effect(2, "second");
        failed_post.result = Err(EffectError::transient("slack.post", "503"));
        dead.effects = vec![effect(1, "first"), failed_post];
        store.record(&dead).await;
        let other = run("run-ok", &trigger, RunStatus::Succeeded, Utc::now());
        store.record(&other).await;

        let failed = store.list_runs(RunFilter {
            failed_only: true,
            ..RunFilter::default()
        });
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].id, "run-dead");
        assert_eq!(store.list_runs(RunFilter::default()).len(), 2);
        let by_rule = store.list_runs(RunFilter {
            rule: Some("other-rule".into()),
            ..RunFilter::default()
        });
        assert!(by_rule.is_empty());

        assert_eq!(store.requeue("run-dead").await, RequeueOutcome::Requeued);
        assert_eq!(store.requeue("run-dead").await, RequeueOutcome::NotFinished);
        assert_eq!(
            store.requeue("run-ok").await,
            RequeueOutcome::NotFailed(RunStatus::Succeeded)
        );
        assert_eq!(store.requeue("missing").await, RequeueOutcome::NotFound);
        let detail = store.get_run("run-dead").unwrap();
        assert_eq!(detail.run.status, RunStatus::Pending);
        assert_eq!(detail.run.attempt, 1);
        assert_eq!(detail.run.error, None);
        assert_eq!(detail.run.effects.len(), 2, "kept for replay");
        let unfinished = store.unfinished().await;
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].run.effects[0].args["text"], "first");
        assert!(unfinished[0].run.effects[1].result.is_err());
        // The retry is recorded by whoever took it.
        let mut retried = unfinished[0].run.clone();
        retried.status = RunStatus::Succeeded;
        retried.finished_at = Some(Utc::now());
        store.record(&retried).await;
        assert_eq!(
            store.get_run("run-dead").unwrap().run.status,
            RunStatus::Succeeded
        );
    }
);

both!(
    run_details_show_the_trigger_with_secrets_redacted,
    |kind| async move {
        let store = open(kind).await;
        let trigger = Event::parse(
            include_str!("../../../examples/events/recording.completed.json"),
            Source::Webhook,
        )
        .unwrap();
        store.accept(&trigger).await;
        store
            .record(&run("r", &trigger, RunStatus::Succeeded, Utc::now()))
            .await;
        let detail = store.get_run("r").unwrap();
        let event = detail.event.as_ref().unwrap();
        assert_eq!(event.event_type, "recording.completed");
        assert_eq!(event.source, "webhook");
        // Taken out of the body on arrival, kept sealed beside it.
        assert_eq!(event.body.get("download_token"), None);
        let json = serde_json::to_value(&detail).unwrap();
        assert_eq!(json["id"], "r");
        assert!(!json.to_string().contains("eyJ0eXAi"), "no download token");
        // The store keeps the token: a resumed download needs it.
        let stored = store.get_event(&trigger.id).unwrap();
        assert!(stored.download_token().is_some());
    }
);

both!(
    effects_keep_one_record_per_position_and_replays_never_replace_them,
    |kind| async move {
        let store = open(kind).await;
        let trigger = event(1);
        let mut record = run("r", &trigger, RunStatus::Running, Utc::now());
        store
            .journal()
            .accept_event_with_runs(&trigger, std::slice::from_ref(&record))
            .await
            .unwrap();
        store.effect_completed("r", &effect(1, "first"));
        store.effect_completed("r", &effect(2, "second"));
        // A second attempt replays the first effect and performs a new second.
        record.attempt = 2;
        let mut replayed = effect(1, "first");
        replayed.replayed = true;
        record.effects = vec![replayed, effect(2, "second, again")];
        record.status = RunStatus::Succeeded;
        record.finished_at = Some(Utc::now());
        store.record(&record).await;
        let effects = store.get_run("r").unwrap().run.effects;
        assert_eq!(effects.len(), 2);
        assert!(!effects[0].replayed, "the original is kept");
        assert_eq!(effects[1].args["text"], "second, again");
    }
);

both!(
    pages_walk_every_run_once_newest_first_through_ties,
    |kind| async move {
        let store = open(kind).await;
        let trigger = event(1);
        store.accept(&trigger).await;
        let at = |second: u32| Utc.with_ymd_and_hms(2026, 1, 2, 9, 0, second).unwrap();
        let of = |id: &str, rule: &str, status, second| RunRecord {
            rule: rule.into(),
            ..run(id, &trigger, status, at(second))
        };
        // Three runs share one creation time: the id orders them.
        for record in [
            of("a", "archive", RunStatus::Succeeded, 1),
            of("b", "notify", RunStatus::Dead, 2),
            of("c", "archive", RunStatus::Failed, 2),
            of("d", "notify", RunStatus::Succeeded, 2),
            of("e", "archive", RunStatus::Dead, 3),
        ] {
            store.record(&record).await;
        }
        let history = store.history();
        let ids = |query: &RunQuery| -> Vec<String> {
            history
                .list_runs(query)
                .unwrap()
                .runs
                .into_iter()
                .map(|r| r.id)
                .collect()
        };
        let mut query = RunQuery {
            limit: 2,
            ..RunQuery::default()
        };
        let mut seen = Vec::new();
        loop {
            let page = history.list_runs(&query).unwrap();
            assert!(page.runs.len() <= 2);
            seen.extend(page.runs.iter().map(|r| r.id.clone()));
            match page.next {
                Some(next) => query.before = Some(next.to_string().parse().unwrap()),
                None => break,
            }
        }
        assert_eq!(seen, ["e", "d", "c", "b", "a"]);
        let failed = RunQuery {
            statuses: vec![RunStatus::Failed, RunStatus::Dead],
            limit: 10,
            ..RunQuery::default()
        };
        assert_eq!(ids(&failed), ["e", "c", "b"]);
        let archive_failed = RunQuery {
            rule: Some("archive".into()),
            ..failed.clone()
        };
        assert_eq!(ids(&archive_failed), ["e", "c"]);
        let activity = history.rule_activity("archive", at(0), 2).unwrap();
        let recent: Vec<&str> = activity.recent.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(recent, ["e", "c"]);
        assert_eq!(activity.counts["dead"], 1);
        assert_eq!(activity.counts["failed"], 1);
        assert_eq!(activity.counts["succeeded"], 1);
    }
);

both!(
    a_run_with_many_log_lines_is_read_a_page_at_a_time,
    |kind| async move {
        let store = open(kind).await;
        let trigger = event(2);
        store.accept(&trigger).await;
        let start = Utc::now();
        let mut record = run("big", &trigger, RunStatus::Succeeded, start);
        record.logs = (0..2_000)
            .map(|n| LogLine {
                level: "info".into(),
                message: format!("line {n:05}"),
                at: start + chrono::TimeDelta::milliseconds(n),
            })
            .collect();
        store.record(&record).await;
        for seq in 1..=150u32 {
            store.effect_completed("big", &effect(seq, &format!("post {seq}")));
        }
        let mut query = TraceQuery {
            limit: 100,
            ..TraceQuery::default()
        };
        let first = store.history().run_trace("big", &query).unwrap().unwrap();
        assert_eq!((first.logs.len(), first.effects.len()), (100, 100));
        assert_eq!((first.logs_total, first.effects_total), (2_000, 150));
        assert_eq!(
            first.event.as_ref().map(|e| e.id.as_str()),
            Some(trigger.id.as_str())
        );
        let mut lines = 0;
        let mut last = None;
        loop {
            let page = store.history().run_trace("big", &query).unwrap().unwrap();
            for log in &page.logs {
                let position = (log.attempt, log.idx);
                assert!(Some(position) > last, "in order, each once");
                last = Some(position);
            }
            lines += page.logs.len();
            match page.logs_next {
                Some(next) => query.logs_after = Some(next),
                None => break,
            }
        }
        assert_eq!(lines, 2_000);
        let effects_page = store
            .history()
            .run_trace(
                "big",
                &TraceQuery {
                    effects_after: Some(120),
                    limit: 100,
                    ..TraceQuery::default()
                },
            )
            .unwrap()
            .unwrap();
        assert_eq!(effects_page.effects.first().map(|e| e.seq), Some(121));
        assert_eq!(
            (effects_page.effects.len(), effects_page.effects_next),
            (30, None)
        );
        assert!(store.history().run_trace("nope", &query).unwrap().is_none());
    }
);

both!(
    pruning_forgets_old_rows_but_never_unfinished_runs_or_their_events,
    |kind| async move {
        let store = open(kind).await;
        let old = ago(40 * DAY);
        let old_events: Vec<Event> = (0..3).map(|n| received(event(n), old)).collect();
        for event in &old_events {
            store.accept(event).await;
        }
        let recent = event(10);
        store.accept(&recent).await;
        let mut old_done = run("old-done", &old_events[0], RunStatus::Succeeded, old);
        old_done.effects = vec![effect(1, "x")];
        old_done.logs = vec![LogLine {
            level: "info".into(),
            message: "m".into(),
            at: old,
        }];
        store.record(&old_done).await;
        store
            .record(&run("old-dead", &old_events[1], RunStatus::Dead, old))
            .await;
        store
            .record(&run("old-pending", &old_events[2], RunStatus::Pending, old))
            .await;
        store
            .record(&run("new-done", &recent, RunStatus::Succeeded, Utc::now()))
            .await;

        let report = store.prune().await;
        assert_eq!((report.runs, report.events), (2, 2));
        // SQLite keeps an entry apart only for an event pruned within its window.
        let (expired, left) = if kind == Kind::Sqlite { (0, 0) } else { (3, 1) };
        assert_eq!(
            report.dedupe, expired,
            "the old events' dedupe windows had passed"
        );
        assert!(store.get_run("old-done").is_none());
        assert!(store.get_run("old-dead").is_none());
        assert!(store.get_run("new-done").is_some());
        let unfinished = store.unfinished().await;
        assert_eq!(
            unfinished.len(),
            1,
            "the old pending run and its event stay"
        );
        assert_eq!(unfinished[0].event.id, old_events[2].id);
        let counts = store.counts().await;
        assert_eq!(
            (
                counts.runs,
                counts.events,
                counts.effects,
                counts.logs,
                counts.dedupe
            ),
            (2, 2, 0, 0, left)
        );
    }
);

both!(
    pruning_keeps_the_row_budget_dropping_the_oldest_first,
    |kind| async move {
        let store = Store::open(
            kind,
            JournalOptions {
                max_runs: 100,
                max_events: 50,
                ..options()
            },
        )
        .await
        .unwrap();
        let base = ago(Duration::from_secs(3600));
        for n in 0..700u64 {
            let at = base + chrono::Duration::milliseconds(n as i64);
            let event = received(event(n), at);
            let status = if n == 0 {
                RunStatus::Pending
            } else {
                RunStatus::Succeeded
            };
            let record = run(&format!("run-{n:04}"), &event, status, at);
            store
                .journal()
                .accept_event_with_runs(&event, std::slice::from_ref(&record))
                .await
                .unwrap();
        }
        let report = store.prune().await;
        assert_eq!((report.runs, report.events), (600, 650));
        let counts = store.counts().await;
        assert_eq!((counts.runs, counts.events), (100, 50));
        let kept = store.list_runs(RunFilter {
            limit: 1_000,
            ..RunFilter::default()
        });
        assert_eq!(kept[0].id, "run-0699", "newest kept");
        assert_eq!(kept[98].id, "run-0601");
        assert_eq!(
            kept[99].id, "run-0000",
            "unfinished, kept beyond the budget"
        );
        assert!(store.get_event(&event(0).id).is_some());
        assert!(store.get_event(&event(1).id).is_none());
    }
);

both!(
    state_persists_across_a_restart_until_its_ttl,
    |kind| async move {
        let store = open(kind).await;
        let state = store.state();
        state
            .set("rule-a", "last", json!({"uuid": "abc", "count": 3}), None)
            .unwrap();
        state
            .set("rule-a", "short", json!(1), Some(Duration::from_millis(1)))
            .unwrap();
        state
            .set("rule-b", "last", json!("other rule"), Some(DAY))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let store = store.reopen().await;
        let state = store.state();
        assert_eq!(
            state.get("rule-a", "last").unwrap(),
            Some(json!({"uuid": "abc", "count": 3}))
        );
        assert_eq!(state.get("rule-a", "short").unwrap(), None, "expired");
        assert_eq!(
            state.get("rule-b", "last").unwrap(),
            Some(json!("other rule"))
        );
        state.set("rule-a", "last", json!(null), None).unwrap();
        assert_eq!(state.get("rule-a", "last").unwrap(), Some(json!(null)));
        assert_eq!(store.prune().await.state, 1, "the expired value is deleted");
    }
);

both!(
    an_effect_started_and_never_recorded_comes_back_in_doubt_until_recorded,
    |kind| async move {
        let store = open(kind).await;
        let trigger = event(3);
        let mut record = run("r", &trigger, RunStatus::Running, Utc::now());
        store
            .journal()
            .accept_event_with_runs(&trigger, std::slice::from_ref(&record))
            .await
            .unwrap();
        let start = |seq: u32| EffectStart {
            seq,
            name: "slack.post".into(),
            args: json!({"channel": "#ops", "text": seq}),
            started_at: Utc.timestamp_opt(1_732_000_000, 0).unwrap(),
        };
        // Effect 1 started and done; effect 2 started when the crash came.
        store.effect_starting("r", &start(1)).unwrap();
        store.effect_completed("r", &effect(1, "first"));
        store.effect_starting("r", &start(2)).unwrap();
        let store = store.reopen().await;
        let unfinished = store.unfinished().await;
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].run.effects.len(), 1, "effect 1 is replayed");
        assert_eq!(unfinished[0].in_doubt, vec![start(2)]);
        // Recorded in doubt with the run: the mark is gone, the record says so.
        record.effects = vec![effect(1, "first"), start(2).into_in_doubt_record()];
        record.status = RunStatus::Dead;
        record.finished_at = Some(Utc::now());
        store.record(&record).await;
        assert!(store.unfinished().await.is_empty());
        let effects = store.get_run("r").unwrap().run.effects;
        assert!(!effects[0].in_doubt);
        assert!(effects[1].in_doubt);
        let error = effects[1].result.as_ref().unwrap_err();
        assert_eq!(
            error.kind,
            zoomwire_engine::effects::EffectErrorKind::InDoubt
        );
    }
);

both!(
    a_resumed_run_replays_the_unredacted_result_which_the_store_keeps_sealed,
    |kind| async move {
        let store = open(kind).await;
        let trigger = event(9);
        store.accept(&trigger).await;
        let mut pending = run("resumed", &trigger, RunStatus::Running, Utc::now());
        pending.effects = vec![EffectRecord {
            seq: 1,
            name: "zoom.get".into(),
            args: json!({"path": "/meetings/1"}),
            result: Ok(json!({"join_url": "https://zoom.us/j/1?pwd=[redacted]"})),
            unredacted: Some(json!({"join_url": "https://zoom.us/j/1?pwd=sealed-meeting-pwd"})),
            started_at: Utc::now(),
            latency_ms: 1.0,
            replayed: false,
            in_doubt: false,
        }];
        store.record(&pending).await;
        let shown = store.get_run("resumed").unwrap();
        assert_eq!(
            shown.run.effects[0].unredacted, None,
            "history never opens it"
        );
        assert!(
            !serde_json::to_string(&shown)
                .unwrap()
                .contains("sealed-meeting-pwd")
        );
        let store = store.reopen().await;
        let unfinished = store.unfinished().await;
        assert_eq!(
            unfinished[0].run.effects[0].unredacted,
            Some(json!({"join_url": "https://zoom.us/j/1?pwd=sealed-meeting-pwd"}))
        );
        // Without its key, the sealed result reads as absent: the redacted copy is replayed.
        std::fs::write(store.data_dir().join("seal.key"), [7u8; 32]).unwrap();
        let store = store.reopen().await;
        let unfinished = store.unfinished().await;
        assert_eq!(unfinished[0].run.effects[0].unredacted, None);
    }
);

both!(
    a_rule_holds_at_most_its_cap_of_live_state_keys,
    |kind| async move {
        let limits = JournalOptions {
            max_state_keys: 2,
            ..options()
        };
        let store = Store::open(kind, limits).await.expect("the store opens");
        let state = store.state();
        let one = json!(1);
        state.set("a", "k1", one.clone(), None).unwrap();
        state
            .set("a", "k2", one.clone(), Some(Duration::from_secs(3600)))
            .unwrap();
        let error = state.set("a", "k3", one.clone(), None).unwrap_err();
        assert!(
            matches!(error, StateError::Full { max_keys: 2, .. }),
            "{error}"
        );
        assert_eq!(state.get("a", "k3").unwrap(), None, "nothing written");
        state.set("a", "k1", json!(2), None).unwrap();
        state.set("b", "k3", one.clone(), None).unwrap();
        // An expired key frees its place before pruning removes it.
        state
            .set("a", "k2", one.clone(), Some(Duration::ZERO))
            .unwrap();
        state.set("a", "k3", one, None).unwrap();
    }
);
