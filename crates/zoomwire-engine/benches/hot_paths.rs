//! Benchmarks of the hot paths, each beside a baseline measured in the same
//! run (the machine is shared and noisy: compare ratios, not times).
//!
//! - `decode/*`: a WebSocket `message` frame (event as a JSON string) into an
//!   `Event`, against a bare `serde_json` parse of the same frame (envelope,
//!   then the content string, into `serde_json::Value`).
//! - `match/*`: decoding and matching one event against 20 rules, and
//!   matching against 10,000 rules spread over 100 event types (the event's
//!   own type has the same 4 rules in both sets).
//! - `condition/*`: one `when` evaluated by Rhai on its compiled AST in a
//!   prepared scope, and by its fast form on the event's tree.
//!
//! - `redact/*`: what recording one effect answer costs (a Slack
//!   `chat.postMessage` answer, redacted by name and by value) with the
//!   settings' secrets and with 1,024 download tokens held, against a plain
//!   clone of it; scrubbing a log line; registering one more token.
//!
//! Run with `cargo bench --bench hot_paths`; `ZOOMWIRE_BENCH_QUICK=1` shortens it.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use zoomwire_engine::effects::redact::redact_tracked;
use zoomwire_engine::engine::matcher::match_event;
use zoomwire_engine::event::Source;
use zoomwire_engine::rules::compile::load_rule_set;
use zoomwire_engine::rules::{RuleSet, RuleSources};
use zoomwire_engine::script::SandboxLimits;
use zoomwire_engine::zoom::frame::{Frame, decode_frame};

const FRAME: &str = include_str!("../../../examples/frames/ws_frame_message.json");

/// The four rules that listen to `meeting.started`, in both sets.
const STARTED_RULES: &[&str] = &[
    "when: event.payload.object.duration >= 30",
    "when: event.payload.object.topic.contains(\"Sync\")",
    "when: event.payload.object.type == 2 && event.payload.object.timezone == \"Europe/Berlin\"",
    "when: event.payload.object.host_id == \"nobody\"",
];

/// Other realistic types for the 20-rule set.
const OTHER_TYPES: &[&str] = &[
    "meeting.ended",
    "meeting.participant_joined",
    "meeting.participant_left",
    "recording.completed",
    "user.created",
    "meeting.created",
    "meeting.deleted",
    "recording.transcript_completed",
];

fn rule_yaml(name: &str, on: &str, when: &str) -> String {
    format!("- name: {name}\n  on: {on}\n  {when}\n  do: log::info(\"x\")\n")
}

fn build_rule_set(dir: &Path, total: usize, types: usize) -> RuleSet {
    let mut text = String::new();
    for (i, when) in STARTED_RULES.iter().enumerate() {
        text.push_str(&rule_yaml(&format!("started-{i}"), "meeting.started", when));
    }
    for i in 0..total - STARTED_RULES.len() {
        let on = if types <= OTHER_TYPES.len() {
            OTHER_TYPES[i % OTHER_TYPES.len()].to_string()
        } else {
            format!("bench.type_{}", i % types)
        };
        text.push_str(&rule_yaml(
            &format!("rule-{i}"),
            &on,
            "when: event.payload.object.duration > 10",
        ));
    }
    let file = dir.join(format!("rules-{total}.yaml"));
    std::fs::write(&file, text).expect("temp dir is writable");
    let sources = RuleSources {
        paths: vec![file],
        scripts_dir: dir.join("no-scripts"),
    };
    load_rule_set(&sources, &SandboxLimits::default()).expect("bench rules compile")
}

fn bare_parse(frame: &str) -> serde_json::Value {
    let envelope: serde_json::Value = serde_json::from_str(frame).expect("valid frame");
    let content = envelope["content"].as_str().expect("string content");
    serde_json::from_str(content).expect("valid event")
}

fn decode(frame: &str) -> zoomwire_engine::event::Event {
    match decode_frame(frame, &Source::Websocket("bench".into())) {
        Ok(Frame::Event(event)) => *event,
        _ => panic!("the sample frame is an event"),
    }
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let small = build_rule_set(dir.path(), 20, OTHER_TYPES.len());
    let large = build_rule_set(dir.path(), 10_000, 100);
    let vars = rhai::Dynamic::from_map(rhai::Map::new());
    let event = decode(FRAME);
    assert_eq!(match_event(&small, &event, &vars).matched.len(), 3);
    assert_eq!(match_event(&large, &event, &vars).matched.len(), 3);

    let mut group = c.benchmark_group("decode");
    group.bench_function("baseline_serde_json_parse", |b| {
        b.iter(|| bare_parse(black_box(FRAME)))
    });
    group.bench_function("frame_to_event", |b| b.iter(|| decode(black_box(FRAME))));
    group.finish();

    let mut group = c.benchmark_group("match");
    group.bench_function("baseline_serde_json_parse", |b| {
        b.iter(|| bare_parse(black_box(FRAME)))
    });
    group.bench_function("decode_and_match_20_rules", |b| {
        b.iter(|| {
            match_event(&small, &decode(black_box(FRAME)), &vars)
                .matched
                .len()
        })
    });
    group.bench_function("match_20_rules", |b| {
        b.iter(|| match_event(&small, black_box(&event), &vars).matched.len())
    });
    group.bench_function("match_10000_rules", |b| {
        b.iter(|| match_event(&large, black_box(&event), &vars).matched.len())
    });
    group.finish();

    let sandbox = small.sandbox();
    let rule = small.rule("started-2").expect("the rule is there");
    let condition = rule.condition.clone().expect("has a condition");
    let fast = rule.fast_condition.clone().expect("a simple condition");
    let tree = event.tree();
    let mut scope = sandbox.expression_scope(event.body(), &event.meta(), &vars);
    let mut group = c.benchmark_group("condition");
    group.bench_function("eval_compiled_when", |b| {
        b.iter(|| {
            sandbox
                .eval_expression(&mut scope, black_box(&condition.ast))
                .expect("evaluates")
        })
    });
    group.bench_function("eval_fast_when", |b| {
        b.iter(|| fast.eval(black_box(&tree)).expect("a sure answer"))
    });
    group.finish();
    redaction(c);
}

/// A Slack `chat.postMessage` answer, as the gateway records one per post.
fn slack_answer() -> serde_json::Value {
    serde_json::json!({
        "ok": true,
        "channel": "C0123456789",
        "ts": "1732030000.000100",
        "message": {
            "type": "message", "subtype": "bot_message", "bot_id": "B0123456789",
            "text": "Recording ready: Weekly sync (48 min) https://zoom.us/rec/share/abcdefghijklmnop",
            "user": "U0123456789", "ts": "1732030000.000100", "team": "T0123456789",
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "*Weekly sync* is ready"}}]
        }
    })
}

fn redaction(c: &mut Criterion) {
    use zoomwire_engine::secrets::Secrets;
    let secrets = Secrets::global();
    for n in 0..10 {
        secrets
            .add(&format!("setting-secret-{n}-{:016x}", n * 7919))
            .unwrap();
    }
    let answer = slack_answer();
    let line = "2026-12-03T23:21:16.034831Z  INFO zoomwire::engine::attempt: run finished rule=recording-to-slack run=01JEXAMPLE outcome=succeeded elapsed_ms=3 effects=1";
    let mut group = c.benchmark_group("redact");
    group.bench_function("baseline_clone_answer", |b| {
        b.iter(|| black_box(&answer).clone())
    });
    group.bench_function("answer_10_secrets", |b| {
        b.iter(|| redact_tracked(black_box(&answer)))
    });
    for n in 0..1024 {
        let token = format!(
            "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzUxMiJ9.{n:08}.{}",
            "x".repeat(400)
        );
        secrets.add_seen(&token).unwrap();
    }
    group.bench_function("answer_10_secrets_1024_tokens", |b| {
        b.iter(|| redact_tracked(black_box(&answer)))
    });
    group.bench_function("log_line_1024_tokens", |b| {
        b.iter(|| secrets.scrub(black_box(line)).len())
    });
    let mut next = 0u64;
    group.bench_function("register_a_token_1024_held", |b| {
        b.iter(|| {
            next += 1;
            let token = format!(
                "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzUxMiJ9.new{next:08}.{}",
                "y".repeat(400)
            );
            secrets.add_seen(&token).unwrap();
        })
    });
    group.finish();
}

fn config() -> Criterion {
    let quick = std::env::var_os("ZOOMWIRE_BENCH_QUICK").is_some();
    let time = if quick {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(3)
    };
    Criterion::default()
        .measurement_time(time)
        .warm_up_time(time / 3)
        .sample_size(if quick { 20 } else { 60 })
}

criterion_group! { name = hot_paths; config = config(); targets = benches }
criterion_main!(hot_paths);
