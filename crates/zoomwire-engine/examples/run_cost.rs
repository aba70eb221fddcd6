//! What one posting run costs outside its effect: runs `N` events (first
//! argument, default 1000) one after another through the [`Executor`] with
//! the bench's `recording-to-slack` rule (no condition; its script posts a
//! text made of two event fields), a memory journal and effects that answer
//! at once ([`RecordingEffects`]), on a two-worker runtime and a two-thread
//! script pool as the daemon has.
//!
//! Made to be counted with callgrind, whose instruction counts repeat from
//! run to run:
//!
//! ```text
//! valgrind --tool=callgrind target/release/examples/run_cost 1000
//! valgrind --tool=callgrind target/release/examples/run_cost 3000
//! ```
//!
//! The cost of one event and its run is the difference between the two
//! totals divided by 2000 (start-up cancels out).

use std::sync::Arc;

use rhai::Dynamic;
use zoomwire_engine::effects::recorder::RecordingEffects;
use zoomwire_engine::engine::executor::Executor;
use zoomwire_engine::engine::journal::RunStatus;
use zoomwire_engine::event::{Event, Source};
use zoomwire_engine::journal::memory::{MemoryJournal, MemoryLimits};
use zoomwire_engine::rules::RuleSources;
use zoomwire_engine::rules::compile::load_rule_set;
use zoomwire_engine::script::{SandboxLimits, ScriptPool};

/// The bench's rule, as `zoomwire bench` writes it.
const RULES: &str = r##"- name: recording-to-slack
  on: recording.completed
  allow: [slack]
  do: |
    slack::post("#alerts", `t=${event.payload.bench_sent_us} n=${event.event_ts} recording-to-slack`);
"##;

/// A `recording.completed` body of the bench's shape, numbered `n`.
fn body(n: usize) -> String {
    let files: Vec<serde_json::Value> = ["MP4", "M4A", "CHAT", "TRANSCRIPT"]
        .iter()
        .enumerate()
        .map(|(i, kind)| {
            serde_json::json!({
                "id": format!("file-{n}-{i}"),
                "meeting_id": "aBcDeFgHiJkLmNoPqRsTuV==",
                "recording_start": "2026-12-04T09:00:00Z",
                "recording_end": "2026-12-04T10:00:00Z",
                "file_type": kind,
                "file_size": 123_456 + i,
                "download_url": format!("https://example.zoom.us/rec/download/{n}/{i}"),
                "status": "completed",
                "recording_type": "shared_screen_with_speaker_view"
            })
        })
        .collect();
    serde_json::json!({
        "event": "recording.completed",
        "event_ts": 1_700_000_000_000_i64 + n as i64,
        "payload": {
            "account_id": "AbCdEfGhIjKlMnOpQrSt",
            "bench_sent_us": "1111111111111111",
            "object": {
                "uuid": format!("uuid-{n}=="),
                "id": 85_000_000_000_i64 + n as i64,
                "host_id": "HoStIdHoStIdHoStId",
                "topic": "Weekly sync",
                "type": 2,
                "start_time": "2026-12-04T09:00:00Z",
                "duration": 60,
                "total_size": 500_000,
                "recording_count": files.len(),
                "recording_files": files
            }
        }
    })
    .to_string()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let events: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(1000);
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("rules.yaml"), RULES)?;
    let sources = RuleSources {
        paths: vec![dir.path().join("rules.yaml")],
        scripts_dir: dir.path().join("scripts"),
    };
    let rule_set = Arc::new(
        load_rule_set(&sources, &SandboxLimits::default())
            .map_err(|errors| format!("{} rule errors", errors.len()))?,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let bodies: Vec<String> = (0..events).map(body).collect();
    runtime.block_on(async {
        let executor = Executor::new(
            Arc::new(MemoryJournal::new(MemoryLimits::default())),
            Arc::new(RecordingEffects::default()),
            Arc::new(ScriptPool::new(2, 16 * 1024 * 1024)),
            Dynamic::from_map(rhai::Map::new()),
        );
        let mut succeeded = 0;
        for body in &bodies {
            let event = Event::parse(body, Source::Websocket("default".into()))?;
            let outcome = executor.handle_event(&rule_set, event).await?;
            for ticket in outcome.runs {
                let record = ticket.wait().await.ok_or("a run ended unrecorded")?;
                if record.status == RunStatus::Succeeded && record.effects.len() == 1 {
                    succeeded += 1;
                }
            }
        }
        executor.wait_idle().await;
        if succeeded != events {
            return Err(format!("{succeeded} of {events} runs posted once").into());
        }
        println!("{events} events, {succeeded} runs posted once");
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
