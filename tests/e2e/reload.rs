//! Hot reload end to end, with real files in temporary folders and the real
//! watcher: edit (also saved by rename, as editors do), add, delete, rename,
//! invalid YAML, invalid Rhai, a chain of script imports, SIGHUP, and what a
//! reload does to queued, running and disabled rules. Every change must take
//! effect within 2 s of the write.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::daemon::eventually;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use zoomwire_engine::effects::{BoxFuture, EffectContext, EffectError, EffectRequest, Effects};
use zoomwire_engine::engine::executor::{Executor, RULE_REMOVED};
use zoomwire_engine::engine::journal::RunStatus;
use zoomwire_engine::event::{Event, Source};
use zoomwire_engine::journal::memory::MemoryJournal;
use zoomwire_engine::reload::{RuleSetHandle, Watching, reload_on_change};
use zoomwire_engine::rules::RuleSources;
use zoomwire_engine::script::{SandboxLimits, ScriptPool};

/// Longest a change may take to be running.
const WITHIN: Duration = Duration::from_secs(2);
const DEBOUNCE: Duration = Duration::from_millis(100);

/// SIGHUP reaches every watcher of this process: the SIGHUP test takes this
/// for writing, the other watching tests for reading, so it runs alone.
static SIGNALS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Effects for these tests: `slack.post` waits for a permit of `gate`.
struct GateEffects {
    gate: Arc<Semaphore>,
}

impl Effects for GateEffects {
    fn perform<'a>(
        &'a self,
        _context: &'a EffectContext,
        request: &'a EffectRequest,
    ) -> BoxFuture<'a, Result<Value, EffectError>> {
        Box::pin(async move {
            if request.name == "slack.post" {
                let permit = self.gate.acquire().await;
                permit.map(|p| p.forget()).ok();
            }
            Ok(json!({"ok": true}))
        })
    }
}

/// A rules folder, a scripts folder, their handle and (optionally) the watcher.
struct Fixture {
    dir: tempfile::TempDir,
    handle: Arc<RuleSetHandle>,
    executor: Executor,
    journal: Arc<MemoryJournal>,
    gate: Arc<Semaphore>,
    shutdown: CancellationToken,
}

impl Fixture {
    fn new(files: &[(&str, &str)]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("rules")).unwrap();
        std::fs::create_dir_all(dir.path().join("scripts")).unwrap();
        for (path, text) in files {
            write(&dir.path().join(path), text);
        }
        let sources = RuleSources {
            paths: vec![dir.path().join("rules")],
            scripts_dir: dir.path().join("scripts"),
        };
        let handle = Arc::new(
            RuleSetHandle::load(sources, SandboxLimits::default())
                .unwrap_or_else(|e| panic!("{e:?}")),
        );
        let journal = Arc::new(MemoryJournal::default());
        let gate = Arc::new(Semaphore::new(0));
        let executor = Executor::new(
            journal.clone(),
            Arc::new(GateEffects { gate: gate.clone() }),
            Arc::new(ScriptPool::new(2, 16 * 1024 * 1024)),
            rhai::Dynamic::from_map(rhai::Map::new()),
        )
        .with_current_rules(handle.clone());
        Fixture {
            dir,
            handle,
            executor,
            journal,
            gate,
            shutdown: CancellationToken::new(),
        }
    }

    /// Starts the watcher and waits until it watches.
    async fn watch(&self, debounce: Duration) {
        let watching = Watching::start(self.handle.sources(), debounce);
        tokio::spawn(reload_on_change(
            self.handle.clone(),
            watching,
            self.shutdown.clone(),
        ));
        let started = Instant::now();
        while !self.handle.status().watching {
            assert!(started.elapsed() < Duration::from_secs(5), "never watched");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Fires one `test.ping` event and returns each rule's output, by rule name.
    async fn outputs(&self) -> Vec<(String, Value)> {
        let outcome = self
            .executor
            .handle_event(&self.handle.current(), ping())
            .await
            .unwrap();
        let mut outputs = Vec::new();
        for ticket in outcome.runs {
            let record = ticket.wait().await.unwrap();
            outputs.push((record.rule, record.output.unwrap_or(Value::Null)));
        }
        outputs.sort_by(|a, b| a.0.cmp(&b.0));
        outputs
    }

    fn rule_names(&self) -> Vec<String> {
        let set = self.handle.current();
        let mut names: Vec<String> = set.rules().iter().map(|r| r.name.to_string()).collect();
        names.sort();
        names
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Saves as editors do: a temporary file renamed over the original.
fn save_by_rename(path: &Path, text: &str) {
    let temporary = path.with_extension("yaml.tmp");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

fn ping() -> Event {
    static N: AtomicI64 = AtomicI64::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed);
    Event::from_value(
        &json!({"event": "test.ping", "event_ts": n, "payload": {"object": {"id": "p"}}}),
        Source::Test,
    )
    .unwrap()
}

fn rule_returning(value: &str) -> String {
    format!("on: test.ping\ndo: |\n  \"{value}\"\n")
}

/// Polls `check` with the shared [`eventually`] until it holds, and returns
/// how long after the change that was.
async fn took_effect<F, Fut>(what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    eventually(what, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await;
    let took = started.elapsed();
    eprintln!(
        "{what}: took effect {} ms after the change",
        took.as_millis()
    );
    took
}

fn output(outputs: &[(String, Value)], rule: &str) -> Option<Value> {
    outputs
        .iter()
        .find(|(name, _)| name == rule)
        .map(|(_, v)| v.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_adds_deletes_and_renames_take_effect_within_two_seconds() {
    let fx = Fixture::new(&[("rules/a.yaml", &rule_returning("v1"))]);
    let _alone = SIGNALS.read().await;
    fx.watch(DEBOUNCE).await;
    assert_eq!(output(&fx.outputs().await, "a"), Some(json!("v1")));

    write(&fx.path("rules/a.yaml"), &rule_returning("v2"));
    let took = took_effect("edit", || async {
        output(&fx.outputs().await, "a") == Some(json!("v2"))
    })
    .await;
    assert!(took < WITHIN, "edit took {took:?}");

    save_by_rename(&fx.path("rules/a.yaml"), &rule_returning("v3"));
    let took = took_effect("edit saved by rename", || async {
        output(&fx.outputs().await, "a") == Some(json!("v3"))
    })
    .await;
    assert!(took < WITHIN, "edit by rename took {took:?}");

    write(&fx.path("rules/sub/b.yaml"), &rule_returning("b1"));
    let took = took_effect("add in a new sub-folder", || async {
        output(&fx.outputs().await, "b") == Some(json!("b1"))
    })
    .await;
    assert!(took < WITHIN, "add took {took:?}");

    std::fs::rename(fx.path("rules/a.yaml"), fx.path("rules/renamed.yaml")).unwrap();
    let took = took_effect("rename", || async { fx.rule_names() == ["b", "renamed"] }).await;
    assert!(took < WITHIN, "rename took {took:?}");
    assert_eq!(output(&fx.outputs().await, "renamed"), Some(json!("v3")));

    std::fs::remove_file(fx.path("rules/sub/b.yaml")).unwrap();
    let took = took_effect("delete", || async { fx.rule_names() == ["renamed"] }).await;
    assert!(took < WITHIN, "delete took {took:?}");
    assert_eq!(fx.outputs().await.len(), 1);

    let status = fx.handle.status();
    assert!(status.ok && status.watching, "{status:?}");
    assert!(status.reloads >= 5, "{status:?}");
    assert_eq!(status.rules, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_yaml_keeps_the_running_set_and_reports_path_line_col() {
    let fx = Fixture::new(&[("rules/a.yaml", &rule_returning("good"))]);
    let _alone = SIGNALS.read().await;
    fx.watch(DEBOUNCE).await;
    let before = fx.handle.current();

    write(
        &fx.path("rules/a.yaml"),
        "on: test.ping\ndo: |\n  \"bad\"\nwhne: true\n",
    );
    let took = took_effect("invalid YAML refused", || async { !fx.handle.status().ok }).await;
    assert!(took < WITHIN, "refusal took {took:?}");
    let status = fx.handle.status();
    assert!(status.failures >= 1, "{status:?}");
    let expected = format!("{}:4:1:", fx.path("rules/a.yaml").display());
    assert!(
        status.errors.iter().any(|e| e.starts_with(&expected)),
        "{expected} in {:?}",
        status.errors
    );
    assert!(Arc::ptr_eq(&before, &fx.handle.current()));
    assert_eq!(output(&fx.outputs().await, "a"), Some(json!("good")));

    write(&fx.path("rules/a.yaml"), "on: [test.ping\n");
    took_effect("unclosed YAML refused", || async {
        fx.handle
            .status()
            .errors
            .iter()
            .any(|e| e.starts_with(&format!("{}:", fx.path("rules/a.yaml").display())))
            && fx.handle.status().failures >= 2
    })
    .await;
    assert_eq!(output(&fx.outputs().await, "a"), Some(json!("good")));

    write(&fx.path("rules/a.yaml"), &rule_returning("fixed"));
    let took = took_effect("fixed", || async {
        output(&fx.outputs().await, "a") == Some(json!("fixed"))
    })
    .await;
    assert!(took < WITHIN, "recovery took {took:?}");
    let status = fx.handle.status();
    assert!(status.ok && status.errors.is_empty(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_rhai_in_a_rule_or_a_script_keeps_the_running_set() {
    let fx = Fixture::new(&[
        ("rules/a.yaml", &rule_returning("good")),
        ("scripts/lib.rhai", "fn one() { 1 }\n"),
    ]);
    let _alone = SIGNALS.read().await;
    fx.watch(DEBOUNCE).await;

    write(
        &fx.path("rules/a.yaml"),
        "on: test.ping\ndo: |\n  let x = ;\n",
    );
    let took = took_effect("invalid rule script refused", || async {
        !fx.handle.status().ok
    })
    .await;
    assert!(took < WITHIN);
    let rule_errors = fx.handle.status().errors;
    let expected = format!("{}:3:", fx.path("rules/a.yaml").display());
    assert!(
        rule_errors.iter().any(|e| e.starts_with(&expected)),
        "{expected} in {rule_errors:?}"
    );
    assert_eq!(output(&fx.outputs().await, "a"), Some(json!("good")));

    write(&fx.path("rules/a.yaml"), &rule_returning("good2"));
    took_effect("rule fixed", || async {
        output(&fx.outputs().await, "a") == Some(json!("good2"))
    })
    .await;
    let failures = fx.handle.status().failures;

    write(&fx.path("scripts/lib.rhai"), "fn one() {\n  1 +\n}\n");
    let took = took_effect("invalid script module refused", || async {
        fx.handle.status().failures > failures
    })
    .await;
    assert!(took < WITHIN);
    let script_errors = fx.handle.status().errors;
    let expected = format!("{}:3:", fx.path("scripts/lib.rhai").display());
    assert!(
        script_errors.iter().any(|e| e.starts_with(&expected)),
        "{expected} in {script_errors:?}"
    );
    assert_eq!(output(&fx.outputs().await, "a"), Some(json!("good2")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_end_of_an_import_chain_changes_the_rule() {
    let fx = Fixture::new(&[
        (
            "rules/chain.yaml",
            "on: test.ping\ndo: |\n  import \"a\" as a;\n  a::value()\n",
        ),
        (
            "scripts/a.rhai",
            "import \"lib/b\" as b;\nfn value() { b::base() + 1 }\n",
        ),
        ("scripts/lib/b.rhai", "fn base() { 1 }\n"),
    ]);
    let _alone = SIGNALS.read().await;
    fx.watch(DEBOUNCE).await;
    assert_eq!(output(&fx.outputs().await, "chain"), Some(json!(2)));

    write(&fx.path("scripts/lib/b.rhai"), "fn base() { 41 }\n");
    let took = took_effect("edit two imports away", || async {
        output(&fx.outputs().await, "chain") == Some(json!(42))
    })
    .await;
    assert!(took < WITHIN, "chain edit took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads() {
    let fx = Fixture::new(&[("rules/a.yaml", &rule_returning("before"))]);
    let _alone = SIGNALS.write().await;
    // A debounce far longer than the test: only SIGHUP can reload in time.
    fx.watch(Duration::from_secs(60)).await;
    write(&fx.path("rules/a.yaml"), &rule_returning("after"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(output(&fx.outputs().await, "a"), Some(json!("before")));

    let sent = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let took = took_effect("SIGHUP", || async {
        output(&fx.outputs().await, "a") == Some(json!("after"))
    })
    .await;
    assert!(took < WITHIN, "SIGHUP reload took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_drops_queued_runs_of_a_removed_rule_and_lets_running_ones_finish() {
    let queued_rule = "on: test.ping\nmode: queued\nmax_runs: 5\nallow: [slack]\ndo: |\n  slack::post(\"#c\", \"hi\");\n  \"old\"\n";
    let fx = Fixture::new(&[
        ("rules/q.yaml", queued_rule),
        ("rules/other.yaml", &rule_returning("other")),
    ]);
    let first = fx
        .executor
        .handle_event(&fx.handle.current(), ping())
        .await
        .unwrap();
    let second = fx
        .executor
        .handle_event(&fx.handle.current(), ping())
        .await
        .unwrap();
    let ticket = |outcome: zoomwire_engine::engine::executor::EventOutcome| {
        outcome.runs.into_iter().find(|t| &*t.rule == "q").unwrap()
    };
    let (first, second) = (ticket(first), ticket(second));

    std::fs::remove_file(fx.path("rules/q.yaml")).unwrap();
    let summary = fx.handle.reload().unwrap();
    assert_eq!(summary.removed, vec!["q".to_string()]);
    fx.gate.add_permits(10);

    let first = first.wait().await.unwrap();
    assert_eq!(first.status, RunStatus::Succeeded, "{first:?}");
    assert_eq!(first.output, Some(json!("old")));
    let second = second.wait().await.unwrap();
    assert_eq!(second.status, RunStatus::Skipped, "{second:?}");
    assert_eq!(second.error.as_deref(), Some(RULE_REMOVED));
    fx.executor.wait_idle().await;
    let recorded = fx
        .journal
        .runs()
        .into_iter()
        .find(|r| r.id == second.id)
        .unwrap();
    assert_eq!(recorded.status, RunStatus::Skipped);
    assert_eq!(recorded.error.as_deref(), Some(RULE_REMOVED));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_rule_stops_matching() {
    let fx = Fixture::new(&[("rules/a.yaml", &rule_returning("on"))]);
    let _alone = SIGNALS.read().await;
    fx.watch(DEBOUNCE).await;
    write(
        &fx.path("rules/a.yaml"),
        &format!("{}enabled: false\n", rule_returning("on")),
    );
    let took = took_effect("disable", || async { fx.outputs().await.is_empty() }).await;
    assert!(took < WITHIN);
    assert_eq!(fx.rule_names(), ["a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rules_folder_removed_and_made_again_is_watched_again() {
    let fx = Fixture::new(&[("rules/a.yaml", &rule_returning("v1"))]);
    let _alone = SIGNALS.read().await;
    fx.watch(DEBOUNCE).await;
    std::fs::remove_dir_all(fx.path("rules")).unwrap();
    took_effect("folder removed", || async { !fx.handle.status().ok }).await;
    assert_eq!(output(&fx.outputs().await, "a"), Some(json!("v1")));

    write(&fx.path("rules/a.yaml"), &rule_returning("v2"));
    took_effect("folder made again", || async {
        output(&fx.outputs().await, "a") == Some(json!("v2"))
    })
    .await;
    // The new folder itself is watched: a later edit is seen too.
    write(&fx.path("rules/a.yaml"), &rule_returning("v3"));
    let took = took_effect("edit in the new folder", || async {
        output(&fx.outputs().await, "a") == Some(json!("v3"))
    })
    .await;
    assert!(took < WITHIN, "edit took {took:?}");
}
