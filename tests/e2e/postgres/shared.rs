//! What only the shared PostgreSQL journal does: several nodes on one
//! database (each event accepted once, runs held by their node, a silent
//! node's runs taken over and its late writes refused), leases decided by
//! the server's clock with growing epochs, versioned migrations, TLS, and
//! errors that name the server but never the URL's secrets.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use zoomwire_engine::cluster::{ClusterStore, NodeIdentity};
use zoomwire_engine::effects::gateway::EffectObserver;
use zoomwire_engine::engine::journal::{Journal, RunStatus};
use zoomwire_engine::journal::postgres::{
    DatabaseTarget, POSTGRES_SCHEMA_VERSION, PostgresJournal, PostgresOptions,
};

use crate::postgres::journal::{effect, event, run};
use crate::postgres::stores::{options, postgres, target};
use crate::support::postgres as pg;

fn database() -> Option<pg::TestDatabase> {
    Some(pg::shared()?.database())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_given_the_same_events_at_once_accept_each_once() {
    let Some(database) = database() else { return };
    let a = postgres(&database, "node-a", options()).await;
    let b = postgres(&database, "node-b", options()).await;
    let events: Vec<_> = (0..60).map(event).collect();
    let accept = |journal: PostgresJournal, events: Vec<zoomwire_engine::event::Event>| {
        tokio::spawn(async move {
            let mut fresh = 0;
            for event in &events {
                let runs = [run(
                    &format!("{}-{}", journal.node(), event.id),
                    event,
                    RunStatus::Pending,
                    Utc::now(),
                )];
                if journal.accept_event_with_runs(event, &runs).await.unwrap() {
                    fresh += 1;
                }
            }
            fresh
        })
    };
    let (from_a, from_b) =
        tokio::join!(accept(a.clone(), events.clone()), accept(b.clone(), events));
    assert_eq!(
        from_a.unwrap() + from_b.unwrap(),
        60,
        "each event accepted by one node"
    );
    let counts = a.counts().await.unwrap();
    assert_eq!(
        (counts.events, counts.runs),
        (60, 60),
        "and only its runs written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_nodes_runs_are_taken_over_and_its_late_writes_refused() {
    let Some(database) = database() else { return };
    let a = postgres(&database, "node-a", options()).await;
    let b = postgres(&database, "node-b", options()).await;
    let (node_a, node_b) = (NodeIdentity::new("node-a"), NodeIdentity::new("node-b"));
    a.register(&node_a, None).await.unwrap();
    b.register(&node_b, None).await.unwrap();
    let trigger = event(1);
    let mut record = run("r1", &trigger, RunStatus::Running, Utc::now());
    a.accept_event_with_runs(&trigger, std::slice::from_ref(&record))
        .await
        .unwrap();
    a.effect_completed("r1", &effect(1, "posted by a"));

    assert!(
        b.unfinished_runs().await.unwrap().is_empty(),
        "a beating node keeps its runs"
    );
    assert!(b.unfinished_run_ids().await.unwrap().is_empty());
    // Node a falls silent past the timeout (its heartbeat is set back).
    database.psql(
        "UPDATE zoomwire.nodes SET heartbeat_at = now() - interval '1 minute' WHERE id = 'node-a'",
    );
    let taken = b.unfinished_runs().await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].run.effects.len(), 1, "with its effects, to replay");
    assert_eq!(
        database.psql("SELECT node || ' ' || claim FROM zoomwire.runs WHERE id = 'r1'"),
        "node-b 2"
    );

    // Node a wakes up: it can start no effect, and record neither an
    // effect nor the run.
    let start = zoomwire_engine::effects::gateway::EffectStart {
        seq: 2,
        name: "slack.post".into(),
        args: serde_json::json!({"channel": "#ops"}),
        started_at: Utc::now(),
    };
    let refused = a.effect_starting("r1", &start).unwrap_err();
    assert!(refused.contains("another node took it over"), "{refused}");
    assert_eq!(
        database.psql("SELECT count(*) FROM zoomwire.effect_starts"),
        "0",
        "no mark written: the effect is not made"
    );
    a.effect_completed("r1", &effect(2, "late post by a"));
    record.status = RunStatus::Succeeded;
    record.finished_at = Some(Utc::now());
    let refused = a.record_run(&record).await.unwrap_err();
    assert!(
        refused.to_string().contains("another node took it over"),
        "{refused}"
    );
    let stored = b.get_run("r1").unwrap().unwrap();
    assert_eq!(stored.run.status, RunStatus::Running);
    assert_eq!(
        stored.run.effects.len(),
        1,
        "the late effect was not recorded"
    );
    // Node b finishes it.
    let mut resumed = taken[0].run.clone();
    resumed.status = RunStatus::Succeeded;
    resumed.finished_at = Some(Utc::now());
    b.record_run(&resumed).await.unwrap();
    assert_eq!(
        b.get_run("r1").unwrap().unwrap().run.status,
        RunStatus::Succeeded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_nodes_runs_are_taken_at_once_and_requeued_runs_by_anyone() {
    let Some(database) = database() else { return };
    let a = postgres(&database, "node-a", options()).await;
    let b = postgres(&database, "node-b", options()).await;
    let node_a = NodeIdentity::new("node-a");
    a.register(&node_a, None).await.unwrap();
    let trigger = event(1);
    let pending = run("left", &trigger, RunStatus::Pending, Utc::now());
    a.accept_event_with_runs(&trigger, std::slice::from_ref(&pending))
        .await
        .unwrap();
    assert!(b.unfinished_runs().await.unwrap().is_empty());
    a.deregister(&node_a).await.unwrap();
    let taken = b.unfinished_runs().await.unwrap();
    assert_eq!(taken.len(), 1, "a stopped node's runs need no timeout");

    let mut dead = taken[0].run.clone();
    dead.status = RunStatus::Dead;
    dead.finished_at = Some(Utc::now());
    b.record_run(&dead).await.unwrap();
    a.register(&node_a, None).await.unwrap();
    assert_eq!(
        a.requeue_run("left").await.unwrap(),
        zoomwire_engine::journal::RequeueOutcome::Requeued
    );
    assert_eq!(
        a.unfinished_run_ids().await.unwrap(),
        ["left"],
        "a requeued run is anybody's"
    );
    assert_eq!(a.unfinished_runs().await.unwrap().len(), 1);
    assert!(
        b.unfinished_runs().await.unwrap().is_empty(),
        "and taken once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_decided_by_the_servers_clock_with_an_epoch_per_holder() {
    let Some(database) = database() else { return };
    let a = postgres(&database, "node-a", options()).await;
    let b = postgres(&database, "node-b", options()).await;
    let (node_a, node_b) = (NodeIdentity::new("node-a"), NodeIdentity::new("node-b"));
    a.register(&node_a, None).await.unwrap();
    b.register(&node_b, None).await.unwrap();
    let ttl = Duration::from_secs(2);
    let lease = "subscription:default";
    assert_eq!(a.acquire(lease, &node_a, ttl).await.unwrap(), Some(1));
    assert_eq!(
        b.acquire(lease, &node_b, ttl).await.unwrap(),
        None,
        "held by a"
    );
    assert_eq!(
        a.acquire(lease, &node_a, ttl).await.unwrap(),
        Some(1),
        "renewed, same epoch"
    );
    // Node a stops renewing: the server's clock expires it.
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    assert_eq!(
        b.acquire(lease, &node_b, ttl).await.unwrap(),
        Some(2),
        "a new holder, a new epoch"
    );
    assert_eq!(a.acquire(lease, &node_a, ttl).await.unwrap(), None);
    let leases = a.leases().await.unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!((leases[0].node.as_str(), leases[0].epoch), ("node-b", 2));
    assert!(leases[0].expires_in_ms > 0);
    // A clean release hands over at once; a stale epoch releases nothing.
    b.release(lease, &node_b, 1).await.unwrap();
    assert_eq!(a.acquire(lease, &node_a, ttl).await.unwrap(), None);
    b.release(lease, &node_b, 2).await.unwrap();
    assert_eq!(a.acquire(lease, &node_a, ttl).await.unwrap(), Some(3));
    // A restarted node a (same id, new process) takes its own lease at once.
    let restarted = NodeIdentity::new("node-a");
    assert!(
        a.register(&restarted, None).await.unwrap(),
        "the earlier process was beating"
    );
    assert_eq!(a.acquire(lease, &restarted, ttl).await.unwrap(), Some(4));
    assert_eq!(
        a.acquire(lease, &node_a, ttl).await.unwrap(),
        None,
        "the old process is out"
    );
    assert!(
        !a.heartbeat(&node_a).await.unwrap(),
        "and told so by its heartbeat"
    );
    assert!(a.heartbeat(&restarted).await.unwrap());
    let nodes = b.nodes(Duration::from_secs(10)).await.unwrap();
    let ids: Vec<(&str, bool)> = nodes.iter().map(|n| (n.id.as_str(), n.alive)).collect();
    assert_eq!(ids, [("node-a", true), ("node-b", true)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_migrate_once_and_a_newer_schema_is_refused() {
    let Some(database) = database() else { return };
    let opens = (0..4).map(|n| {
        let url = database.url();
        tokio::spawn(async move {
            let options = PostgresOptions {
                node: format!("node-{n}"),
                pool_size: 1,
                ..PostgresOptions::default()
            };
            PostgresJournal::open(&target(&url), options)
                .await
                .map(|_| ())
        })
    });
    for opened in futures_util::future::join_all(opens).await {
        opened.unwrap().unwrap();
    }
    assert_eq!(
        database.psql("SELECT count(*) || ' ' || max(version) FROM zoomwire.schema_version"),
        format!("{POSTGRES_SCHEMA_VERSION} {POSTGRES_SCHEMA_VERSION}")
    );
    database.psql(&format!(
        "INSERT INTO zoomwire.schema_version (version) VALUES ({})",
        POSTGRES_SCHEMA_VERSION + 1
    ));
    let error = PostgresJournal::open(&target(&database.url()), PostgresOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("newer zoomwire"), "{error}");
    assert!(
        error.contains(&format!(
            "127.0.0.1:{}/{}",
            database_port(&database),
            database.name
        )),
        "{error}"
    );
}

fn database_port(database: &pg::TestDatabase) -> u16 {
    database
        .url()
        .split(':')
        .nth(2)
        .and_then(|rest| rest.split('/').next())
        .and_then(|port| port.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connects_to_a_verified_server_and_refuses_an_unknown_one() {
    let Some(database) = database() else { return };
    let journal = PostgresJournal::open(&target(&database.tls_url()), PostgresOptions::default())
        .await
        .expect("TLS with the server's CA");
    assert_eq!(
        database.psql(&format!(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
             WHERE ssl AND datname = '{}' AND application_name = 'zoomwire'",
            database.name
        )),
        "1",
        "the journal's connection is encrypted"
    );
    drop(journal);
    let without_ca = database
        .tls_url()
        .split("&sslrootcert")
        .next()
        .unwrap()
        .to_string();
    let error = PostgresJournal::open(&target(&without_ca), PostgresOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.to_lowercase().contains("certificate"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_server_but_never_the_password() {
    let secret = "hunter2-secret";
    let url =
        format!("postgres://zoom:{secret}@127.0.0.1:1/zoomwire?sslmode=disable&connect_timeout=2");
    let error = PostgresJournal::open(&target(&url), PostgresOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("127.0.0.1:1/zoomwire"), "{error}");
    assert!(!error.contains(secret), "{error}");
    let bad = DatabaseTarget::parse(&format!("postgres://zoom:{secret}@h/d?sslmode=bogus").into())
        .unwrap_err();
    assert!(!bad.contains(secret), "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_loses_no_accepted_event_and_the_journal_reconnects() {
    let Some(server) = pg::private() else { return };
    let database = server.database();
    let journal = postgres(&database, "node-a", options()).await;
    assert!(journal.accept_event(&event(1)).await.unwrap());
    server.stop();
    let refused = journal.accept_event(&event(2)).await;
    assert!(
        refused.is_err(),
        "a write while the server is down fails: {refused:?}"
    );
    server.start_again();
    let journal = Arc::new(journal);
    let mut accepted = false;
    for _ in 0..50 {
        if let Ok(fresh) = journal.accept_event(&event(2)).await {
            accepted = fresh;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted, "the journal reconnects");
    assert!(
        !journal.accept_event(&event(1)).await.unwrap(),
        "the first event survived"
    );
    assert_eq!(journal.counts().await.unwrap().events, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_one_event_accepted_at_once_are_accepted_once() {
    let Some(database) = database() else { return };
    let journal = Arc::new(postgres(&database, "node-a", options()).await);
    let copies = (0..20).map(|n| {
        let journal = journal.clone();
        tokio::spawn(async move {
            let trigger = event(1);
            let runs = [run(
                &format!("run-{n}"),
                &trigger,
                RunStatus::Pending,
                Utc::now(),
            )];
            journal
                .accept_event_with_runs(&trigger, &runs)
                .await
                .unwrap()
        })
    });
    let fresh: Vec<bool> = futures_util::future::join_all(copies)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(fresh.iter().filter(|f| **f).count(), 1, "{fresh:?}");
    assert_eq!(
        journal.counts().await.unwrap().runs,
        1,
        "only the accepted copy's run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_turn_goes_to_the_earliest_waiting_head_and_nodes_never_wait_for_each_other() {
    let Some(database) = database() else { return };
    let a = postgres(&database, "node-a", options()).await;
    let b = postgres(&database, "node-b", options()).await;
    a.register(&NodeIdentity::new("node-a"), None)
        .await
        .unwrap();
    b.register(&NodeIdentity::new("node-b"), None)
        .await
        .unwrap();
    let keyed = |id: &str, n: u64| {
        let mut record = run(id, &event(n), RunStatus::Pending, Utc::now());
        record.rule = "queued".into();
        record.key = Some("meeting-1".into());
        record
    };
    let (a1, b1, a2, b2) = (
        keyed("a1", 1),
        keyed("b1", 2),
        keyed("a2", 3),
        keyed("b2", 4),
    );
    for (journal, record, n) in [(&a, &a1, 1), (&b, &b1, 2), (&a, &a2, 3), (&b, &b2, 4)] {
        journal
            .accept_event_with_runs(&event(n), std::slice::from_ref(record))
            .await
            .unwrap();
    }
    let finish = |record: &zoomwire_engine::engine::journal::RunRecord| {
        let mut done = record.clone();
        done.status = RunStatus::Succeeded;
        done.finished_at = Some(Utc::now());
        done
    };
    // Node a's line has a2 first (say a1 was admitted after it there).
    assert!(a.claim_start(&a2, 1).await.unwrap(), "the key is free");
    assert!(!b.claim_start(&b1, 1).await.unwrap(), "a2 runs: b1 waits");
    a.record_run(&finish(&a2)).await.unwrap();
    // a1 was written before b1 but waits behind a2 in a's line, not for the
    // key: it does not hold b1 back (else each node would wait for the other).
    assert!(b.claim_start(&b1, 1).await.unwrap(), "b1 goes");
    assert!(!a.claim_start(&a1, 1).await.unwrap(), "b1 runs: a1 waits");
    b.record_run(&finish(&b1)).await.unwrap();
    assert!(
        !b.claim_start(&b2, 1).await.unwrap(),
        "a1, written earlier, waits at the head of a's line: b2 waits for it"
    );
    assert!(a.claim_start(&a1, 1).await.unwrap(), "so a1 goes");
    assert_eq!(
        database
            .psql("SELECT string_agg(id || ':' || status, ',' ORDER BY seq) FROM zoomwire.runs"),
        "a1:running,b1:succeeded,a2:succeeded,b2:pending"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_runs_holds_per_rule_and_key_across_nodes_and_the_database_keeps_the_places() {
    let Some(database) = database() else { return };
    let a = postgres(&database, "node-a", options()).await;
    let b = postgres(&database, "node-b", options()).await;
    a.register(&NodeIdentity::new("node-a"), None)
        .await
        .unwrap();
    b.register(&NodeIdentity::new("node-b"), None)
        .await
        .unwrap();
    let keyed = |id: &str, n: u64| {
        let mut record = run(id, &event(n), RunStatus::Pending, Utc::now());
        record.rule = "parallel".into();
        record.key = Some("meeting-1".into());
        record
    };
    let (a1, b1, a2) = (keyed("a1", 1), keyed("b1", 2), keyed("a2", 3));
    for (journal, record, n) in [(&a, &a1, 1), (&b, &b1, 2), (&a, &a2, 3)] {
        journal
            .accept_event_with_runs(&event(n), std::slice::from_ref(record))
            .await
            .unwrap();
    }
    // max_runs: 2 for the rule and key, whichever node runs them.
    assert!(a.claim_start(&a1, 2).await.unwrap(), "place 0");
    assert!(b.claim_start(&b1, 2).await.unwrap(), "place 1");
    assert!(!a.claim_start(&a2, 2).await.unwrap(), "both places held");
    assert!(
        a.claim_start(&a1, 2).await.unwrap(),
        "a run keeps its place"
    );
    // Another key of the rule has places of its own.
    let mut other = keyed("c1", 4);
    other.key = Some("meeting-2".into());
    a.accept_event_with_runs(&event(4), std::slice::from_ref(&other))
        .await
        .unwrap();
    assert!(a.claim_start(&other, 2).await.unwrap());
    let mut done = b1.clone();
    done.status = RunStatus::Succeeded;
    done.finished_at = Some(Utc::now());
    b.record_run(&done).await.unwrap();
    assert!(a.claim_start(&a2, 2).await.unwrap(), "b1's place is free");
    assert_eq!(
        database.psql(
            "SELECT string_agg(id || ':' || status || ':' || place, ',' ORDER BY seq) FROM zoomwire.runs"
        ),
        "a1:running:0,b1:succeeded:1,a2:running:1,c1:running:0"
    );
    // The database itself refuses a second run in a held place, whatever
    // a node asks for.
    let refused = database
        .psql_error("UPDATE zoomwire.runs SET status = 'running', place = 0 WHERE id = 'b1'");
    assert!(refused.contains("runs_places"), "{refused}");
}
