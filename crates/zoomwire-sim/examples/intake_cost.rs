//! Callgrind harness: N bench frames through the intake's per-event path
//! (decode_frame, match_event, Activity::event_accepted, the source's JSON).
use std::hint::black_box;

use zoomwire_engine::admin::activity::Activity;
use zoomwire_engine::engine::matcher::match_event;
use zoomwire_engine::event::Source;
use zoomwire_engine::rules::RuleSources;
use zoomwire_engine::rules::compile::load_rule_set;
use zoomwire_engine::script::SandboxLimits;
use zoomwire_engine::zoom::frame::{Frame, decode_frame};
use zoomwire_sim::bench::workload::{Generator, rules_yaml};

#[inline(never)]
fn decode(frame: &str, source: &Source) -> zoomwire_engine::event::Event {
    match decode_frame(frame, source) {
        Ok(Frame::Event(e)) => *e,
        _ => panic!(),
    }
}

#[inline(never)]
fn matching(
    rules: &zoomwire_engine::rules::RuleSet,
    e: &zoomwire_engine::event::Event,
    vars: &rhai::Dynamic,
) -> usize {
    match_event(rules, e, vars).matched.len()
}

#[inline(never)]
fn accepted(activity: &Activity, e: &zoomwire_engine::event::Event) {
    activity.event_accepted(e, &[]);
    black_box(serde_json::to_string(&e.source).unwrap());
}

#[inline(never)]
fn process(
    frames: &[String],
    rules: &zoomwire_engine::rules::RuleSet,
    activity: &Activity,
) -> usize {
    let source = Source::Websocket("bench".into());
    let vars = rhai::Dynamic::from_map(rhai::Map::new());
    let mut n = 0;
    for frame in frames {
        let e = decode(frame, &source);
        n += matching(rules, &e, &vars);
        accepted(activity, &e);
        drop(black_box(e));
    }
    n
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bench.yaml"), rules_yaml()).unwrap();
    let sources = RuleSources {
        paths: vec![dir.path().join("bench.yaml")],
        scripts_dir: dir.path().join("none"),
    };
    let rules = load_rule_set(&sources, &SandboxLimits::default()).unwrap();
    let mut generator = Generator::new(7, 1_732_000_000_000);
    generator.with_bursts(true);
    let frames: Vec<String> = generator
        .take(n)
        .into_iter()
        .map(|e| e.frame_sent_at(1_732_000_000_000_000))
        .collect();
    let activity = Activity::default();
    // warm up (Once-inits) outside the measured function
    let warm: Vec<String> = frames.iter().take(50).cloned().collect();
    process(&warm, &rules, &activity);
    let t = std::time::Instant::now();
    let matched = process(&frames, &rules, &activity);
    eprintln!(
        "{n} frames, {matched} matches, {:?}/frame",
        t.elapsed() / n as u32
    );
}
