//! What one `slack::post` costs, from the script thread's host call
//! ([`RunEffects::call`]) through [`LiveEffects`], reqwest and a real HTTP
//! exchange over loopback, to the answer back: posts `N` messages (first
//! argument, default 1000) one after another to a minimal keep-alive HTTP
//! server in this process that answers like Slack's `chat.postMessage`.
//!
//! Made to be counted with callgrind, whose instruction counts repeat from
//! run to run (the wall clock here does not):
//!
//! ```text
//! valgrind --tool=callgrind --separate-threads=yes \
//!     target/release/examples/slack_post_cost 2000
//! ```
//!
//! The cost of one post is the difference between two runs' totals divided
//! by the difference in posts (start-up cancels out); `--separate-threads`
//! keeps the server thread's share apart. It also prints the connections
//! the server accepted: a warm pool makes one.
//!
//! As in the daemon, the settings' secrets are registered for redaction by
//! value and a Prometheus recorder counts the effects' metrics, so their
//! cost per post is counted too.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde_json::json;
use url::Url;
use zoomwire_engine::effects::gateway::RunEffects;
use zoomwire_engine::effects::live::{LiveConfig, LiveEffects};
use zoomwire_engine::effects::state::MemoryState;
use zoomwire_engine::effects::{Capability, CapabilitySet, EffectContext, ZoomAccountRef};
use zoomwire_engine::secrets::Secrets;

/// The bot token the example posts with.
const TOKEN: &str = "xoxb-cost-example-token";

/// Slack's answer to a posted message (the shape of the real one, trimmed).
const ANSWER: &str = r#"{"ok":true,"channel":"C0123456789","ts":"1700000000.000100","message":{"type":"message","subtype":"bot_message","text":"t=1 n=2 posted","ts":"1700000000.000100","username":"zoomwire","bot_id":"B0123456789"}}"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let posts: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(1000);
    // What the daemon holds: its settings' secrets and a metrics recorder.
    for secret in [
        TOKEN,
        "zoom-client-secret-cost-example",
        "webhook-secret-cost-example",
    ] {
        Secrets::global().add(secret)?;
    }
    let _metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let base = Url::parse(&format!("http://{}/api", listener.local_addr()?))?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || serve(listener, &counter));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut config = LiveConfig::new(&std::env::temp_dir());
    config.slack_api_base = base;
    config.slack_bot_token = Some(SecretString::from(TOKEN));
    let effects = {
        let _entered = runtime.enter();
        Arc::new(LiveEffects::new(
            config,
            Vec::new(),
            Arc::new(MemoryState::default()),
        )?)
    };
    let started = Instant::now();
    for post in 0..posts {
        let run = RunEffects::new(
            context(post),
            CapabilitySet::new([Capability::Slack]),
            effects.clone(),
            runtime.handle().clone(),
        );
        let args = json!({"channel": "#bench", "text": format!("t={post} n=1700000000000 posted by rule 3")});
        let answer = run.call("slack.post", args)?;
        if answer["ok"] != true {
            return Err(format!("post {post} answered {answer}").into());
        }
        run.release_answers();
    }
    println!(
        "{posts} posts in {:.3} s; the server accepted {} connection(s)",
        started.elapsed().as_secs_f64(),
        accepted.load(Ordering::Relaxed)
    );
    Ok(())
}

fn context(post: usize) -> EffectContext {
    EffectContext {
        rule: Arc::from("post-to-slack"),
        run_id: Arc::from(format!("run-{post}").as_str()),
        deadline: Instant::now() + Duration::from_secs(30),
        http_hosts: Arc::from(Vec::new()),
        download_token: None,
        zoom_account: ZoomAccountRef::Unspecified,
    }
}

/// Answers every request on every connection with [`ANSWER`], keeping connections open.
fn serve(listener: TcpListener, accepted: &AtomicUsize) {
    for stream in listener.incoming().flatten() {
        accepted.fetch_add(1, Ordering::Relaxed);
        std::thread::spawn(move || {
            let _ = answer_all(stream);
        });
    }
}

fn answer_all(stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\n\r\n{ANSWER}",
        ANSWER.len()
    );
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        writer.write_all(response.as_bytes())?;
    }
}
