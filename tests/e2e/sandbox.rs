//! End-to-end tests of the script sandbox on its public API: hostile scripts
//! fail their own run, within their timeout, with an error naming the limit,
//! while a well-behaved job on the same pool completes; imports stay inside
//! the scripts folder; effects go through `RunEffects` with capabilities;
//! conditions are pure; the event cannot be changed. Every hostile script
//! also starts on a runtime thread as the daemon's scripts do
//! (`zoomwire_engine::script::inline`), and fails there as on the pool.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use rhai::Dynamic;
use serde_json::{Value, json};

use zoomwire_engine::effects::gateway::RunEffects;
use zoomwire_engine::effects::recorder::{CannedAnswer, RecordingEffects};
use zoomwire_engine::effects::{
    BoxFuture, Capability, CapabilitySet, EffectContext, EffectError, EffectErrorKind,
    EffectRequest, Effects,
};
use zoomwire_engine::event::{Event, Source};
use zoomwire_engine::script::{
    Sandbox, SandboxLimits, ScriptError, ScriptJob, ScriptModules, ScriptPool, inline,
};

/// How far past its timeout a hostile run may end.
const MARGIN: Duration = Duration::from_millis(1000);
/// The timeout of hostile runs.
const HOSTILE_TIMEOUT: Duration = Duration::from_secs(1);
/// A well-behaved script: a loop, an effect, a result.
const GOOD_SCRIPT: &str = r##"
    let total = 0;
    for i in 0..1000 { total += i; }
    slack::post("#ok", `total ${total}`);
    total
"##;

/// A runtime whose threads scripts may run on, as the daemon's.
static SCRIPT_RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    inline::runtime_builder()
        .worker_threads(2)
        .build()
        .expect("runtime")
});

struct Harness {
    sandbox: Arc<Sandbox>,
    pool: Arc<ScriptPool>,
    effects: Arc<dyn Effects>,
    event: Event,
}

struct Outcome {
    result: Result<Dynamic, ScriptError>,
    effects: Arc<RunEffects>,
    elapsed: Duration,
}

impl Harness {
    fn new(limits: SandboxLimits) -> Harness {
        Harness::build(
            limits,
            ScriptModules::empty(),
            Arc::new(RecordingEffects::default()),
        )
    }

    fn with_modules(dir: &Path, limits: SandboxLimits) -> Harness {
        let modules = ScriptModules::load(dir, &limits).expect("scripts load");
        Harness::build(limits, modules, Arc::new(RecordingEffects::default()))
    }

    fn build(limits: SandboxLimits, modules: ScriptModules, effects: Arc<dyn Effects>) -> Harness {
        // The hostile run twice (from the pool and from a runtime thread)
        // and the well-behaved one.
        let pool = Arc::new(ScriptPool::new(3, limits.effective().stack_size));
        let event = Event::parse(
            include_str!("../../examples/events/recording.completed.json"),
            Source::Test,
        )
        .expect("sample event parses");
        Harness {
            sandbox: Arc::new(Sandbox::new(limits, modules)),
            pool,
            effects,
            event,
        }
    }

    fn job(&self, source: &str, allow: &[&str], timeout: Duration) -> (ScriptJob, Arc<RunEffects>) {
        let ast = self
            .sandbox
            .compile_script(source)
            .unwrap_or_else(|e| panic!("{source} should compile: {e}"));
        let capabilities = CapabilitySet::new(
            allow
                .iter()
                .map(|c| Capability::parse(c).expect("capability")),
        );
        let deadline = Instant::now() + timeout;
        let context = EffectContext {
            rule: Arc::from("test-rule"),
            run_id: Arc::from("run-1"),
            deadline,
            http_hosts: capabilities.http_hosts(),
            download_token: None,
            zoom_account: Default::default(),
        };
        let effects = Arc::new(
            RunEffects::new(
                context,
                capabilities,
                self.effects.clone(),
                tokio::runtime::Handle::current(),
            )
            .with_output_limits(self.sandbox.limits().output_limits()),
        );
        let job = ScriptJob {
            sandbox: self.sandbox.clone(),
            ast: Arc::new(ast),
            event: self.event.body().clone(),
            meta: self.event.meta(),
            vars: Dynamic::from_map(rhai::Map::from([("team".into(), "ops".into())])),
            effects: effects.clone(),
            last_effects: Arc::new([]),
            deadline,
            cancel: Arc::new(AtomicBool::new(false)),
        };
        (job, effects)
    }

    async fn run(&self, source: &str, allow: &[&str], timeout: Duration) -> Outcome {
        let (job, effects) = self.job(source, allow, timeout);
        let started = Instant::now();
        let result = self.pool.run(job).await;
        Outcome {
            result,
            effects,
            elapsed: started.elapsed(),
        }
    }

    /// As [`Harness::run`], from a thread of [`SCRIPT_RUNTIME`]: the job
    /// starts there and moves to the pool if it must.
    async fn run_inline(&self, source: &str, allow: &[&str], timeout: Duration) -> Outcome {
        let (job, effects) = self.job(source, allow, timeout);
        let pool = self.pool.clone();
        let started = Instant::now();
        let result = SCRIPT_RUNTIME.spawn(async move { pool.run(job).await });
        Outcome {
            result: result.await.expect("the run's task ends"),
            effects,
            elapsed: started.elapsed(),
        }
    }

    /// Runs `source` beside a well-behaved job, from the pool and from a
    /// runtime thread; returns the hostile run's error, the same both ways.
    async fn hostile(&self, source: &str) -> ScriptError {
        let [pooled, inline] = self.hostile_both_ways(source).await;
        assert_eq!(
            kind_of(&pooled),
            kind_of(&inline),
            "{source}: {pooled} on the pool, {inline} from a runtime thread"
        );
        pooled
    }

    /// As [`Harness::hostile`], for a script stopped by whichever of its
    /// limits it reaches first (which can depend on the machine's speed):
    /// its errors from the pool and from a runtime thread.
    async fn hostile_both_ways(&self, source: &str) -> [ScriptError; 2] {
        let (hostile, inline, good) = tokio::join!(
            self.run(source, &[], HOSTILE_TIMEOUT),
            self.run_inline(source, &[], HOSTILE_TIMEOUT),
            self.run(GOOD_SCRIPT, &["slack"], Duration::from_secs(30)),
        );
        assert!(
            inline.elapsed <= HOSTILE_TIMEOUT + MARGIN,
            "{source} took {:?} from a runtime thread",
            inline.elapsed
        );
        let value = good.result.expect("the well-behaved job completes");
        assert_eq!(value.as_int().unwrap(), 499_500);
        let records = good.effects.records();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].name, "slack.post");
        assert!(
            hostile.elapsed <= HOSTILE_TIMEOUT + MARGIN,
            "{source} took {:?}",
            hostile.elapsed
        );
        match (hostile.result, inline.result) {
            (Err(pooled), Err(inline)) => [pooled, inline],
            (pooled, inline) => panic!("{source} should fail both ways: {pooled:?}, {inline:?}"),
        }
    }
}

/// A timeout error for a run submitted with `timeout` (give or take the
/// scheduling delay between computing the deadline and submitting the job).
fn assert_timeout(error: &ScriptError, timeout: Duration) {
    let ScriptError::Timeout { after } = error else {
        panic!("expected a timeout, got {error:?}");
    };
    assert!(
        *after <= timeout && *after + Duration::from_millis(200) >= timeout,
        "{after:?} for a {timeout:?} timeout"
    );
    assert!(
        error.to_string().starts_with("run exceeded its "),
        "{error}"
    );
}

/// What failed a run: the limit it broke, or its error.
fn kind_of(error: &ScriptError) -> String {
    match error {
        ScriptError::Limit { limit, .. } => format!("the limit {limit}"),
        ScriptError::Timeout { .. } => "the timeout".into(),
        other => other.to_string(),
    }
}

fn limit_name(error: &ScriptError) -> &str {
    match error {
        ScriptError::Limit { limit, .. } => limit,
        ScriptError::Timeout { .. } => "timeout",
        other => panic!("expected a limit error, got {other:?}"),
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

// ---------------------------------------------------------------- hostile scripts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_loop_hits_the_operation_limit() {
    let harness = Harness::new(SandboxLimits {
        max_operations: 200_000,
        ..SandboxLimits::default()
    });
    let error = harness.hostile("loop {}").await;
    assert_eq!(
        error.to_string(),
        "script exceeded the operation limit (max_operations = 200000)"
    );
    assert_eq!(limit_name(&error), "max_operations");
    // Callbacks from native functions count too (Rhai counts them on a copy).
    let harness = Harness::new(SandboxLimits {
        max_operations: 20_000,
        ..SandboxLimits::default()
    });
    let error = harness.hostile(&callback_spin()).await;
    assert_eq!(
        error.to_string(),
        "script exceeded the operation limit (max_operations = 20000)"
    );
}

/// Loops without a loop statement: closures called back by `all`.
fn callback_spin() -> String {
    let z = zeros(999);
    format!("{z}.all(|a| {z}.all(|b| {z}.all(|c| c == 0)))")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_loop_hits_the_deadline() {
    let harness = Harness::new(SandboxLimits {
        max_operations: u64::MAX / 2,
        ..SandboxLimits::default()
    });
    let error = harness.hostile("loop {}").await;
    assert_timeout(&error, HOSTILE_TIMEOUT);
    let error = harness.hostile(&callback_spin()).await;
    assert_timeout(&error, HOSTILE_TIMEOUT);
    // A `try` around the function that runs out of time cannot keep it going.
    let error = harness
        .hostile("fn spin() { loop {} } loop { try { spin() } catch { } }")
        .await;
    assert_timeout(&error, HOSTILE_TIMEOUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_referencing_array_growth_stops() {
    // Each step copies the whole array, so the operation limit alone lets it
    // run for a long time: the deadline or the array size stops it.
    let harness = Harness::new(SandboxLimits::default());
    for error in harness
        .hostile_both_ways("let a = [42]; loop { a[0] = a; }")
        .await
    {
        assert!(
            ["timeout", "max_array_size", "max_value_depth"].contains(&limit_name(&error)),
            "{error}"
        );
    }
    let small = Harness::new(SandboxLimits {
        max_array_size: 500,
        ..SandboxLimits::default()
    });
    for error in small
        .hostile_both_ways("let a = [42]; loop { a[0] = a; }")
        .await
    {
        assert!(
            ["max_array_size", "max_value_depth"].contains(&limit_name(&error)),
            "{error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_doubling_hits_the_string_limit() {
    let harness = Harness::new(SandboxLimits::default());
    let error = harness.hostile(r#"let s = "x"; loop { s += s; }"#).await;
    assert_eq!(
        error.to_string(),
        "string too large (max_string_size = 1048576)"
    );
    let error = harness.hostile(r#""x".pad(1_000_000_000, "y")"#).await;
    assert_eq!(limit_name(&error), "max_string_size");
}

/// A recursive function whose body nests `shape` as deep as the parser
/// allows, so that every call level uses as much native stack as it can.
fn hungriest_recursion(sandbox: &Sandbox, shape: fn(&str) -> String) -> String {
    (1..=40)
        .rev()
        .map(|levels| {
            let body = (0..levels).fold("f(n + 1)".to_string(), |body, _| shape(&body));
            format!("fn f(n) {{ {body} }} f(0)")
        })
        .find(|source| sandbox.compile_script(source).is_ok())
        .expect("some nesting compiles")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_recursion_hits_the_call_limit() {
    // The smallest stack the pool allows, against the hungriest recursions.
    let harness = Harness::new(SandboxLimits {
        stack_size: 1,
        ..SandboxLimits::default()
    });
    let error = harness.hostile("fn f(n) { f(n + 1) } f(0)").await;
    assert_eq!(
        error.to_string(),
        "call stack too deep (max_call_levels = 32)"
    );
    let shapes: [fn(&str) -> String; 6] = [
        |body| format!("1 + ({body})"),
        |body| format!("switch n {{ _ => {body} }}"),
        |body| format!("if n >= 0 {{ {body} }} else {{ 0 }}"),
        |body| format!("abs({body})"),
        |body| format!("[{body}][0]"),
        |body| format!("`${{{body}}}`"),
    ];
    for shape in shapes {
        let source = hungriest_recursion(&harness.sandbox, shape);
        let error = harness.hostile(&source).await;
        assert_eq!(limit_name(&error), "max_call_levels", "{source}");
    }
    // Closures calling themselves are functions too.
    let error = harness.hostile("let f = |g| g.call(g); f.call(f)").await;
    assert_eq!(limit_name(&error), "max_call_levels");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_levels_above_32_are_capped() {
    let harness = Harness::new(SandboxLimits {
        max_call_levels: 10_000,
        ..SandboxLimits::default()
    });
    assert_eq!(harness.sandbox.limits().max_call_levels, 32);
    let error = harness.hostile("fn f(n) { f(n + 1) } f(0)").await;
    assert_eq!(
        error.to_string(),
        "call stack too deep (max_call_levels = 32)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursion_through_a_module_hits_the_call_limit() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "rec.rhai",
        "fn down(n) { down(n + 1) }\nfn ping(n) { pong(n + 1) }\nfn pong(n) { ping(n + 1) }",
    );
    let harness = Harness::with_modules(dir.path(), SandboxLimits::default());
    let error = harness.hostile("import \"rec\" as r; r::down(0)").await;
    assert_eq!(
        error.to_string(),
        "call stack too deep (max_call_levels = 32)"
    );
    let error = harness.hostile("import \"rec\" as r; r::ping(0)").await;
    assert_eq!(limit_name(&error), "max_call_levels");
}

#[test]
fn deeply_nested_source_is_a_compile_error() {
    // Compiling happens on the caller's thread: prove it on a 2 MiB stack.
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(compile_deeply_nested_sources)
        .unwrap()
        .join()
        .unwrap();
}

fn compile_deeply_nested_sources() {
    let sandbox = Sandbox::new(
        SandboxLimits {
            max_expr_depth: 1_000_000,
            ..SandboxLimits::default()
        },
        ScriptModules::empty(),
    );
    let nestings: [(&str, &str); 8] = [
        ("(", ")"),
        ("[", "]"),
        ("#{a:", "}"),
        ("-(", ")"),
        ("!(", ")"),
        ("`${", "}`"),
        ("if true { ", " }"),
        ("switch 1 { _ => ", " }"),
    ];
    for depth in [100, 100_000] {
        for (open, close) in nestings {
            let source = format!("{}1{}", open.repeat(depth), close.repeat(depth));
            let error = sandbox.compile_script(&source).unwrap_err();
            assert!(
                error
                    .message
                    .starts_with("expression nested too deeply (max_expr_depth = 64"),
                "{open}: {error}"
            );
            let error = sandbox.compile_expression(&source).unwrap_err();
            assert!(
                error.message.starts_with("expression nested too deeply"),
                "{open}: {error}"
            );
        }
    }
    for (start, chain) in [
        ("1", " + 1"),
        ("2", " ** 1"),
        ("true", " && true"),
        ("1", ".abs()"),
        ("[0]", "[0]"),
    ] {
        let source = format!("{start}{}", chain.repeat(100_000));
        let error = sandbox.compile_script(&source).unwrap_err();
        assert!(
            error.message.starts_with("expression nested too deeply"),
            "{chain}: {error}"
        );
    }
    let blocks = format!("{}{}", "{".repeat(10_000), "}".repeat(10_000));
    assert!(sandbox.compile_script(&blocks).is_err());
    let branches = format!("if true {{ 1 }}{}", " else if true { 1 }".repeat(10_000));
    assert!(sandbox.compile_script(&branches).is_err());
    let functions = format!("fn f(x) {{ {}x{} }}", "(".repeat(1000), ")".repeat(1000));
    let error = sandbox.compile_script(&functions).unwrap_err();
    assert!(
        error.message.starts_with("expression nested too deeply"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleep_fails_at_once() {
    let harness = Harness::new(SandboxLimits::default());
    for source in [
        "sleep(10)",
        "sleep(10.0)",
        "Fn(\"sleep\").call(10)",
        "call(Fn(\"sleep\"), 10)",
    ] {
        let started = Instant::now();
        let error = harness.hostile(source).await;
        assert!(started.elapsed() < Duration::from_secs(5), "{source}");
        assert!(
            error
                .to_string()
                .contains("sleep is not available in the sandbox"),
            "{source}: {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_is_disabled() {
    let harness = Harness::new(SandboxLimits::default());
    let error = harness.sandbox.compile_script("eval(\"1\")").unwrap_err();
    assert_eq!(error.message, "eval is not available in the sandbox");
    for source in ["Fn(\"eval\").call(\"1\")", "call(Fn(\"eval\"), \"1\")"] {
        let error = harness.hostile(source).await;
        assert!(
            error
                .to_string()
                .contains("eval is not available in the sandbox"),
            "{source}: {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_and_array_bombs_hit_their_limits() {
    let harness = Harness::new(SandboxLimits {
        max_map_size: 1_000,
        max_array_size: 1_000,
        ..SandboxLimits::default()
    });
    let error = harness
        .hostile("let m = #{}; let i = 0; loop { m[`k${i}`] = i; i += 1; }")
        .await;
    assert_eq!(
        error.to_string(),
        "object map too large (max_map_size = 1000)"
    );
    let error = harness.hostile("let a = [1]; loop { a += a; }").await;
    assert_eq!(error.to_string(), "array too large (max_array_size = 1000)");
    let error = harness
        .hostile("let a = []; loop { a.push(a.len()); }")
        .await;
    assert_eq!(limit_name(&error), "max_array_size");
    let error = harness.hostile("[0].pad(1_000_000_000, 0)").await;
    assert_eq!(limit_name(&error), "max_array_size");
    let error = harness.hostile("blob(1_000_000_000)").await;
    assert_eq!(limit_name(&error), "max_array_size");
    let errors = harness
        .hostile_both_ways("let m = #{a: [1]}; loop { m = #{a: m.a + m.a, b: m}; }")
        .await;
    for error in errors {
        assert!(
            ["max_array_size", "max_map_size"].contains(&limit_name(&error)),
            "{error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_size_limits_hold_against_bombs() {
    let harness = Harness::new(SandboxLimits::default());
    let error = harness.hostile("let a = [1]; loop { a += a; }").await;
    assert_eq!(
        error.to_string(),
        "array too large (max_array_size = 50000)"
    );
    let errors = harness
        .hostile_both_ways("let m = #{}; let i = 0; loop { m[`k${i}`] = i; i += 1; }")
        .await;
    for error in errors {
        assert!(
            ["max_map_size", "timeout"].contains(&limit_name(&error)),
            "{error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_nested_by_plain_assignment_are_caught() {
    // Plain assignment checks no size: the periodic scan of the variables
    // finds the value too deep, long before its timeout.
    let harness = Harness::new(SandboxLimits::default());
    for source in [
        "let m = #{}; loop { m = #{x: m}; }",
        "let a = []; loop { a = [a]; }",
    ] {
        let started = Instant::now();
        let error = harness.hostile(source).await;
        assert_eq!(
            error.to_string(),
            "value nested too deeply (max_value_depth = 64)"
        );
        assert!(started.elapsed() < HOSTILE_TIMEOUT, "{source}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_filled_by_index_are_caught() {
    // Rhai checks the item assigned, not the map or array it goes into.
    let harness = Harness::new(SandboxLimits {
        max_operations: u64::MAX / 2,
        max_map_size: 1_000,
        ..SandboxLimits::default()
    });
    let big = zeros(20_000);
    let cases = [
        (
            "let m = #{}; let i = 0; loop { m[`k${i}`] = i; i += 1; }".to_string(),
            "object map too large (max_map_size = 1000)",
        ),
        (
            format!(
                "let big = {big}; let m = #{{}}; let i = 0; loop {{ m[`k${{i}}`] = big; i += 1; }}"
            ),
            "array too large (max_array_size = 50000)",
        ),
        (
            format!("let big = {big}; let a = {big}; let i = 0; loop {{ a[i] = big; i += 1; }}"),
            "array too large (max_array_size = 50000)",
        ),
    ];
    for (source, expected) in cases {
        let started = Instant::now();
        let error = harness.hostile(&source).await;
        assert_eq!(error.to_string(), expected);
        assert!(started.elapsed() < HOSTILE_TIMEOUT, "{expected}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_values_do_not_leave_the_script_thread() {
    let harness = Harness::new(SandboxLimits::default());
    // Either the periodic scan or the check of the result finds it.
    let error = harness
        .hostile("let m = #{}; for i in 0..500 { m = #{x: m}; } m")
        .await;
    assert!(
        error
            .to_string()
            .ends_with("nested too deeply (max_value_depth = 64)"),
        "{error}"
    );
    let error = harness
        .hostile("fn deep() { let m = #{}; for i in 0..70 { m = #{x: m}; } m } deep()")
        .await;
    assert!(
        error
            .to_string()
            .ends_with("nested too deeply (max_value_depth = 64)"),
        "{error}"
    );
    let outcome = harness
        .run(
            r##"let m = #{}; for i in 0..70 { m = #{x: m}; } slack::post(#{channel: "#a", text: "x", blocks: m})"##,
            &["slack"],
            HOSTILE_TIMEOUT,
        )
        .await;
    // The argument check refuses it (or the scan, if it ran first).
    let error = outcome.result.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("nested too deeply (max_value_depth = 64)"),
        "{error}"
    );
    assert!(outcome.effects.records().is_empty());
    let error = harness
        .hostile("let m = #{}; for i in 0..40 { m = #{x: m}; } throw m;")
        .await;
    assert!(
        error.to_string().contains("nested too deeply to show"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variable_and_module_counts_are_limited() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "m.rhai", "fn one() { 1 }");
    let harness = Harness::with_modules(dir.path(), SandboxLimits::default());
    let lets: String = (0..1_100).map(|i| format!("let v{i} = {i};\n")).collect();
    let error = harness.hostile(&lets).await;
    assert_eq!(
        error.to_string(),
        "too many variables (max_variables = 1000)"
    );
    let error = harness
        .hostile("let n = 0; loop { import \"m\" as m; n += m::one(); }")
        .await;
    assert_eq!(
        error.to_string(),
        "too many modules imported (max_modules = 32)"
    );
}

// ---------------------------------------------------------------- imports

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_cannot_leave_the_scripts_folder() {
    let root = tempfile::tempdir().unwrap();
    write(root.path(), "secret.rhai", "fn secret() { \"top secret\" }");
    let scripts = root.path().join("scripts");
    write(&scripts, "ok.rhai", "fn ok() { 1 }");
    #[cfg(unix)]
    std::os::unix::fs::symlink(root.path().join("secret.rhai"), scripts.join("link.rhai")).unwrap();
    let harness = Harness::with_modules(&scripts, SandboxLimits::default());
    let secret_path = root.path().join("secret").display().to_string();
    let cases = [
        (
            "import \"../secret\" as s; s::secret()".to_string(),
            "import `../secret` is refused: `..` would leave the scripts folder",
        ),
        (
            "import \"lib/../../secret\" as s; s::secret()".to_string(),
            "is refused: `..` would leave",
        ),
        (
            format!("import \"{secret_path}\" as s; s::secret()"),
            "is refused: absolute paths are not allowed",
        ),
        #[cfg(unix)]
        (
            "import \"link\" as s; s::secret()".to_string(),
            "import `link` is refused: it is a symlink that leads outside the scripts folder",
        ),
        (
            "import \"missing\" as s; 1".to_string(),
            "module `missing` not found in the scripts folder",
        ),
    ];
    for (source, expected) in cases {
        let error = harness.sandbox.compile_script(&source).unwrap_err();
        assert!(error.message.contains(expected), "{source}: {error}");
        assert_eq!((error.line, error.column), (1, 8), "{source}");
    }
    // A computed import path is resolved when it runs, by the same jail.
    let error = harness
        .hostile("let p = \"../\" + \"secret\"; import p as s; s::secret()")
        .await;
    assert!(error.to_string().contains("is refused"), "{error}");
    let ok = harness
        .run("import \"ok\" as ok; ok::ok()", &[], HOSTILE_TIMEOUT)
        .await;
    assert_eq!(ok.result.unwrap().as_int().unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_import_chains_work() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "lib/text.rhai",
        "fn shout(s) { s.to_upper() + \"!\" }\nlet WORDS = [\"a\"];\nexport WORDS;",
    );
    write(
        dir.path(),
        "recordings.rhai",
        "import \"lib/text\" as text;\n\
         fn headline(rec) { text::shout(rec.topic) }\n\
         fn announce(rec) { slack::post(\"#recordings\", headline(rec)) }",
    );
    let harness = Harness::with_modules(dir.path(), SandboxLimits::default());
    let outcome = harness
        .run(
            "import \"recordings\" as rec;\n\
             rec::announce(event.payload.object);\n\
             rec::headline(event.payload.object)",
            &["slack"],
            Duration::from_secs(10),
        )
        .await;
    let headline = outcome.result.unwrap().into_string().unwrap();
    assert!(headline.ends_with('!'), "{headline}");
    assert_eq!(headline, headline.to_uppercase());
    let records = outcome.effects.records();
    assert_eq!(records[0].args["channel"], "#recordings");
    assert_eq!(records[0].args["text"], Value::String(headline));
    // Module variables are shared by every run, so no run may change them.
    for source in [
        "import \"lib/text\" as text; text::WORDS.push(\"b\")",
        "import \"lib/text\" as text; text::WORDS = []",
    ] {
        let outcome = harness.run(source, &[], Duration::from_secs(5)).await;
        assert!(outcome.result.is_err(), "{source}");
    }
    let copy = harness
        .run(
            "import \"lib/text\" as text; let w = text::WORDS; w.push(\"b\"); w.len()",
            &[],
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(copy.result.unwrap().as_int().unwrap(), 2);
    let words = harness
        .run(
            "import \"lib/text\" as text; text::WORDS.len()",
            &[],
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(words.result.unwrap().as_int().unwrap(), 1);
}

// ---------------------------------------------------------------- effects

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_functions_make_the_documented_requests() {
    let harness = Harness::new(SandboxLimits::default());
    let script = r##"
        let m = zoom::get("/users/{id}", #{id: "me"});
        zoom::get("/users/me");
        let items = zoom::paginate("/users", "users");
        zoom::paginate("/past_meetings/{uuid}/participants", "participants", #{uuid: "/ab==", page_size: 300});
        zoom::post("/users", #{email: "a@b.c"});
        zoom::patch("/meetings/{id}", #{id: 5}, #{topic: "t"});
        zoom::put("/x", [1, 2]);
        zoom::delete("/recordings/{id}");
        zoom::delete("/recordings/{id}", #{id: 7, action: "trash"});
        zoom::download(event.payload.object.recording_files[0], "archive/a.mp4");
        slack::post("#a", "hi");
        slack::post(#{channel: "#b", text: "yo", blocks: []});
        slack::webhook("default", "plain");
        slack::webhook("ops", #{text: "rich"});
        email::send(#{to: ["a@b.c"], subject: "s", text: "t"});
        http::request(#{method: "GET", url: "https://api.example.com/x"});
        log::info("info line");
        log::warn(42);
        log::error("bad");
        state::set("k", #{n: 1});
        state::set("t", 1, 60);
        state::set("u", 1, "5m");
        let back = state::get("k");
        let at = now();
        print("printed");
        #{ back: back.n, at: at, uuid: zoom::uuid("/ab==") }
    "##;
    let outcome = harness
        .run(
            script,
            &[
                "zoom.read",
                "zoom.write",
                "zoom.download",
                "slack",
                "email",
                "http:api.example.com",
            ],
            Duration::from_secs(10),
        )
        .await;
    let value = outcome.result.unwrap();
    let map = value.read_lock::<rhai::Map>().unwrap().clone();
    assert_eq!(map["back"].as_int().unwrap(), 1);
    assert_eq!(map["uuid"].to_string(), "%252Fab%253D%253D");
    let at = map["at"].to_string();
    assert!(chrono::DateTime::parse_from_rfc3339(&at).is_ok(), "{at}");
    let records = outcome.effects.records();
    let requests: Vec<(String, Value)> = records
        .iter()
        .map(|r| (r.name.clone(), r.args.clone()))
        .collect();
    let expected = vec![
        (
            "zoom.get",
            json!({"path": "/users/{id}", "params": {"id": "me"}}),
        ),
        ("zoom.get", json!({"path": "/users/me", "params": {}})),
        (
            "zoom.paginate",
            json!({"path": "/users", "items_key": "users", "params": {}}),
        ),
        (
            "zoom.paginate",
            json!({"path": "/past_meetings/{uuid}/participants", "items_key": "participants", "params": {"uuid": "/ab==", "page_size": 300}}),
        ),
        (
            "zoom.post",
            json!({"path": "/users", "params": {}, "body": {"email": "a@b.c"}}),
        ),
        (
            "zoom.patch",
            json!({"path": "/meetings/{id}", "params": {"id": 5}, "body": {"topic": "t"}}),
        ),
        (
            "zoom.put",
            json!({"path": "/x", "params": {}, "body": [1, 2]}),
        ),
        (
            "zoom.delete",
            json!({"path": "/recordings/{id}", "params": {}}),
        ),
        (
            "zoom.delete",
            json!({"path": "/recordings/{id}", "params": {"id": 7, "action": "trash"}}),
        ),
    ];
    for (index, (name, args)) in expected.iter().enumerate() {
        assert_eq!(requests[index].0, *name, "call {index}");
        assert_eq!(requests[index].1, *args, "call {index}");
    }
    let names: Vec<&str> = requests.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        &names[9..],
        [
            "zoom.download",
            "slack.post",
            "slack.post",
            "slack.webhook",
            "slack.webhook",
            "email.send",
            "http.request",
            "state.set",
            "state.set",
            "state.set",
            "state.get",
            "now"
        ]
    );
    assert_eq!(requests[9].1["dest"], "archive/a.mp4");
    assert!(requests[9].1["file"]["download_url"].is_string());
    assert_eq!(requests[10].1, json!({"channel": "#a", "text": "hi"}));
    assert_eq!(
        requests[11].1,
        json!({"channel": "#b", "text": "yo", "blocks": []})
    );
    assert_eq!(requests[12].1, json!({"name": "default", "text": "plain"}));
    assert_eq!(
        requests[13].1,
        json!({"name": "ops", "payload": {"text": "rich"}})
    );
    assert_eq!(requests[16].1, json!({"key": "k", "value": {"n": 1}}));
    assert_eq!(requests[17].1["ttl"], 60);
    assert_eq!(requests[18].1["ttl"], 300);
    let logs = outcome.effects.logs();
    let lines: Vec<(&str, &str)> = logs
        .iter()
        .map(|l| (l.level.as_str(), l.message.as_str()))
        .collect();
    assert_eq!(
        lines,
        [
            ("info", "info line"),
            ("warn", "42"),
            ("error", "bad"),
            ("info", "printed")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_capability_is_refused_by_name() {
    let harness = Harness::new(SandboxLimits::default());
    let outcome = harness
        .run(r##"slack::post("#a", "hi")"##, &[], Duration::from_secs(5))
        .await;
    let ScriptError::Effect(error) = outcome.result.unwrap_err() else {
        panic!("expected an effect error");
    };
    assert_eq!(error.kind, EffectErrorKind::Denied);
    assert!(
        error.message.contains("lacks the capability `slack`"),
        "{}",
        error.message
    );
    let outcome = harness
        .run(
            r##"let caught = "";
               try { http::request(#{method: "GET", url: "https://evil.test/"}) }
               catch (e) { caught = e.kind + ": " + e.message }
               caught"##,
            &["http:api.example.com"],
            Duration::from_secs(5),
        )
        .await;
    let caught = outcome.result.unwrap().into_string().unwrap();
    assert!(caught.starts_with("denied: "), "{caught}");
    assert!(
        caught.contains("may not reach host `evil.test`"),
        "{caught}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effect_errors_are_catchable_maps() {
    let mut not_found = EffectError::permanent("zoom.get", "user does not exist");
    not_found.status = Some(404);
    not_found.code = Some(json!(1001));
    let effects = RecordingEffects::new(vec![CannedAnswer {
        effect: "zoom.get".into(),
        args: json!({"path": "/users/{id}"}),
        answer: Err(not_found.clone()),
    }]);
    let harness = Harness::build(
        SandboxLimits::default(),
        ScriptModules::empty(),
        Arc::new(effects),
    );
    let caught = harness
        .run(
            r#"let caught = "no error";
               try { zoom::get("/users/{id}", #{id: "x"}); } catch (e) { caught = e }
               caught"#,
            &["zoom.read"],
            Duration::from_secs(5),
        )
        .await;
    let map = caught.result.unwrap().cast::<rhai::Map>();
    assert_eq!(map["effect"].to_string(), "zoom.get");
    assert_eq!(map["kind"].to_string(), "permanent");
    assert_eq!(map["message"].to_string(), "user does not exist");
    assert_eq!(map["status"].as_int().unwrap(), 404);
    assert_eq!(map["code"].as_int().unwrap(), 1001);

    let uncaught = harness
        .run(
            r#"zoom::get("/users/{id}", #{id: "x"})"#,
            &["zoom.read"],
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(
        uncaught.result.unwrap_err(),
        ScriptError::Effect(not_found.clone())
    );
    let rethrown = harness
        .run(
            r#"fn fetch() { zoom::get("/users/{id}", #{id: "x"}) }
               try { fetch() } catch (e) { log::warn(e.message); throw e; }"#,
            &["zoom.read"],
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(rethrown.result.unwrap_err(), ScriptError::Effect(not_found));
    let own = harness
        .run(r#"throw "my own error""#, &[], Duration::from_secs(5))
        .await;
    assert!(
        matches!(own.result.unwrap_err(), ScriptError::Runtime { message, .. } if message == "my own error")
    );
}

// ---------------------------------------------------------------- conditions and the event

#[test]
fn conditions_are_pure() {
    let sandbox = Sandbox::new(SandboxLimits::default(), ScriptModules::empty());
    let event = Event::parse(
        include_str!("../../examples/events/recording.completed.json"),
        Source::Test,
    )
    .unwrap();
    let mut scope = sandbox.expression_scope(event.body(), &event.meta(), &Dynamic::UNIT);
    for source in [
        r##"slack::post("#a", "x")"##,
        r#"zoom::get("/users/me")"#,
        r#"state::set("k", 1)"#,
        r#"log::info("x")"#,
        "now()",
        "[1].map(|x| { loop { } })",
        "[1].map(|x| { for i in 0..10 { } })",
        r#"eval("1")"#,
    ] {
        let refused = match sandbox.compile_expression(source) {
            Err(_) => true,
            Ok(ast) => sandbox.eval_expression(&mut scope, &ast).is_err(),
        };
        assert!(refused, "{source} must not run in a condition");
    }
    let uuid = sandbox
        .compile_expression(r#"zoom::uuid("/a//b")"#)
        .unwrap();
    let value = sandbox.eval_expression(&mut scope, &uuid).unwrap();
    assert_eq!(value.to_string(), "%252Fa%252F%252Fb");
    let when = sandbox
        .compile_expression(r#"event.event == "recording.completed" && meta.source == "test""#)
        .unwrap();
    assert!(
        sandbox
            .eval_expression(&mut scope, &when)
            .unwrap()
            .as_bool()
            .unwrap()
    );
    assert_eq!(scope.len(), 3);
}

/// An array literal of `n` zeros (conditions cannot loop to build one).
fn zeros(n: usize) -> String {
    format!("[{}]", vec!["0"; n].join(","))
}

#[test]
fn hostile_conditions_fail_with_named_limits_on_a_small_stack() {
    // Conditions run on the caller's thread: prove it on a 2 MiB stack, the
    // size of a tokio worker's.
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(|| {
            // A long timeout, so that each limit is reached even in a debug build.
            let sandbox = Sandbox::new(
                SandboxLimits {
                    max_operations: u64::MAX / 2,
                    condition_timeout: Duration::from_secs(20),
                    ..SandboxLimits::default()
                },
                ScriptModules::empty(),
            );
            let quick = Sandbox::new(
                SandboxLimits {
                    max_operations: u64::MAX / 2,
                    ..SandboxLimits::default()
                },
                ScriptModules::empty(),
            );
            let mut scope =
                sandbox.expression_scope(&Dynamic::UNIT, &Dynamic::UNIT, &Dynamic::UNIT);
            let (z999, z1000) = (zeros(999), zeros(999));
            let spin = format!("{z1000}.all(|a| {z1000}.all(|b| {z1000}.all(|c| c == 0)))");
            let cases = [
                (
                    "(|f| f.call(f)).call(|f| f.call(f))".to_string(),
                    "max_call_levels",
                ),
                (
                    format!("{z1000}.reduce(|acc, x| acc + [x, x], [])"),
                    "max_array_size",
                ),
                (
                    format!("{z999}.reduce(|acc, x| [acc], [])"),
                    "max_value_depth",
                ),
                (
                    format!("{z999}.reduce(|acc, x| #{{x: acc}}, #{{}})"),
                    "max_value_depth",
                ),
                (format!("{z1000}.map(|x| #{{a: x, b: x}})"), "max_map_size"),
                (
                    format!(r#"{z999}.reduce(|s, x| s + s, "x")"#),
                    "max_string_size",
                ),
                (format!("{z1000}.map(|x| {z1000})"), "max_array_size"),
            ];
            for (source, limit) in cases {
                let ast = sandbox.compile_expression(&source).unwrap();
                let started = Instant::now();
                let error = sandbox.eval_expression(&mut scope, &ast).unwrap_err();
                assert!(started.elapsed() < Duration::from_secs(10), "{source}");
                assert_eq!(limit_name(&error), limit, "{source}: {error}");
                assert_eq!(scope.len(), 3);
            }
            let ast = quick.compile_expression(&spin).unwrap();
            let started = Instant::now();
            let error = quick.eval_expression(&mut scope, &ast).unwrap_err();
            assert_eq!(
                error.to_string(),
                "condition exceeded its 50ms timeout (condition_timeout = 50ms)"
            );
            assert!(started.elapsed() < Duration::from_millis(500));
        })
        .unwrap()
        .join()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_cannot_be_mutated() {
    let harness = Harness::new(SandboxLimits::default());
    let original = harness.event.body_json();
    let topic = original["payload"]["object"]["topic"]
        .as_str()
        .unwrap()
        .to_string();
    for source in [
        r#"event.payload.object.topic = "changed""#,
        r#"event.event = "x""#,
        "event.payload.object.recording_files.clear()",
        "event.payload.object.recording_files.push(1)",
        "event = #{}",
        r#"meta.id = "x""#,
        r#"let f = || { event.event = "x"; }; f.call()"#,
        r#"let f = || { meta.id = "x"; }; f.call()"#,
        r#"fn change() { this.event = "x"; } event.change()"#,
        r#"fn change() { this.payload.object.topic = "x"; } event.change()"#,
    ] {
        let outcome = harness.run(source, &[], Duration::from_secs(5)).await;
        let error = outcome.result.expect_err(source);
        assert!(
            matches!(error, ScriptError::Runtime { .. }),
            "{source}: {error:?}"
        );
    }
    // A copy can change; the event does not.
    let copy = harness
        .run(
            r#"let e = event; e.payload.object.topic = "changed";
               let files = event.payload.object.recording_files; files.clear();
               let all = [event]; all[0].event = "x";
               e.payload.object.topic"#,
            &[],
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(copy.result.unwrap().to_string(), "changed");
    let after = harness
        .run("event.payload.object.topic", &[], Duration::from_secs(5))
        .await;
    assert_eq!(after.result.unwrap().to_string(), topic);
    let sandbox = &harness.sandbox;
    let mut scope =
        sandbox.expression_scope(harness.event.body(), &harness.event.meta(), &Dynamic::UNIT);
    let ast = sandbox
        .compile_expression("event.payload.object.topic")
        .unwrap();
    assert_eq!(
        sandbox
            .eval_expression(&mut scope, &ast)
            .unwrap()
            .to_string(),
        topic
    );
    let files = sandbox
        .compile_expression("event.payload.object.recording_files.len()")
        .unwrap();
    let count = original["payload"]["object"]["recording_files"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        sandbox
            .eval_expression(&mut scope, &files)
            .unwrap()
            .as_int()
            .unwrap(),
        count as i64
    );
}

// ---------------------------------------------------------------- memory and output

/// A small memory budget, so that bombs reach it at once.
fn budget(mib: usize) -> SandboxLimits {
    SandboxLimits {
        max_memory: mib << 20,
        ..SandboxLimits::default()
    }
}

/// A megabyte string in `s`.
const BIG: &str = r#"let s = "y"; s.pad(1000000, "y");"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bombs_end_at_the_budget_in_callbacks_frames_and_variables() {
    let harness = Harness::new(budget(16));
    let many_variables: String = (0..100)
        .map(|i| format!("let v{i} = []; v{i}.pad(45000, {i});\n"))
        .collect();
    for source in [
        format!("{BIG} let a = []; a.pad(2000, 0); a.map(|i| s + i)"),
        format!("fn grow(n) {{ {BIG} grow(n + 1) }} grow(0)"),
        many_variables,
    ] {
        let error = harness.hostile(&source).await;
        assert_eq!(
            error.to_string(),
            "script exceeded its memory budget (max_memory = 16MiB)",
            "{source}"
        );
        assert_eq!(limit_name(&error), "max_memory");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_too_large_to_record_fails_its_run() {
    // One string held, a thousand times in the result: converting it to JSON
    // for the run record would build a gigabyte.
    let harness = Harness::new(SandboxLimits::default());
    let source =
        format!("{BIG} let f = Fn(\"x\"); for i in 0..1000 {{ f = f.curry(s); }} #{{f: f}}");
    let error = harness.hostile(&source).await;
    assert_eq!(limit_name(&error), "max_string_size", "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effect_answers_count_once_against_the_run_that_keeps_them() {
    // Each answer is made on the runtime's threads; the run keeps its own copy
    // (in its record and its variables). Were the copy made elsewhere and freed
    // on the script thread, every answer would give the run room to spare.
    let effects = RecordingEffects::new(vec![CannedAnswer {
        effect: "zoom.get".into(),
        args: json!({"path": "/big"}),
        answer: Ok(json!({"text": "x".repeat(200_000)})),
    }]);
    let harness = Harness::build(budget(32), ScriptModules::empty(), Arc::new(effects));
    let fetch = r#"for i in 0..100 { let answer = zoom::get("/big"); }"#;
    let fetched = harness
        .run(
            &format!("{fetch} 1"),
            &["zoom.read"],
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(fetched.result.unwrap().as_int().unwrap(), 1);
    assert_eq!(fetched.effects.records().len(), 100);
    // The records hold 20 MB; 20 MB more does not fit in 32.
    let grow = format!("fn grow(n) {{ {BIG} if n < 20 {{ grow(n + 1) }} else {{ 0 }} }} grow(0)");
    let alone = harness.run(&grow, &[], Duration::from_secs(10)).await;
    assert_eq!(
        alone.result.unwrap().as_int().unwrap(),
        0,
        "20 MB alone fits"
    );
    let both = harness
        .run(
            &format!("{fetch} {grow}"),
            &["zoom.read"],
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(limit_name(&both.result.unwrap_err()), "max_memory");
}

#[test]
fn a_condition_is_held_to_the_budget() {
    let sandbox = Sandbox::new(budget(8), ScriptModules::empty());
    let body = json!({"event": "x", "payload": {"big": "y".repeat(500_000)}}).to_string();
    let event = Event::parse(&body, Source::Test).unwrap();
    let mut scope = sandbox.expression_scope(event.body(), &event.meta(), &Dynamic::UNIT);
    let ast = sandbox
        .compile_expression(&format!(
            "{}.map(|i| event.payload.big + i).len() > 0",
            zeros(999)
        ))
        .unwrap();
    let error = sandbox.eval_expression(&mut scope, &ast).unwrap_err();
    assert_eq!(
        error.to_string(),
        "condition exceeded its memory budget (max_memory = 8MiB)"
    );
    let small = sandbox
        .compile_expression(&format!(
            "{}.map(|i| event.payload.big + i).len() > 0",
            zeros(1)
        ))
        .unwrap();
    assert!(
        sandbox
            .eval_expression(&mut scope, &small)
            .unwrap()
            .as_bool()
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_keeps_a_bounded_log_and_makes_a_bounded_number_of_effects() {
    let harness = Harness::new(SandboxLimits {
        max_log_lines: 50,
        max_log_bytes: 4096,
        max_effects: 20,
        ..SandboxLimits::default()
    });
    let chatty = harness
        .run(
            "for i in 0..1000 { log::info(`line ${i}`) } 7",
            &[],
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(chatty.result.unwrap().as_int().unwrap(), 7);
    let logs = chatty.effects.logs();
    assert_eq!(logs.len(), 51);
    assert_eq!(logs[49].message, "line 49");
    assert_eq!(logs[50].level, "warn");
    assert_eq!(
        logs[50].message,
        "log truncated: 950 more lines (7550 bytes) dropped (max_log_lines = 50, max_log_bytes = 4096)"
    );
    let wordy = harness
        .run(
            r#"let l = "x"; l.pad(1000, "x"); for i in 0..10 { print(l) }"#,
            &[],
            Duration::from_secs(5),
        )
        .await;
    let logs = wordy.effects.logs();
    assert_eq!(logs.len(), 5, "four lines of 1000 bytes fit in 4096");
    assert!(
        logs[4]
            .message
            .starts_with("log truncated: 6 more lines (6000 bytes)"),
        "{}",
        logs[4].message
    );

    for source in [
        "loop { now(); }",
        "let i = 0; loop { state::set(`k${i}`, i); i += 1; }",
        "loop { try { now(); } catch { } }",
    ] {
        let run = harness.run(source, &[], Duration::from_secs(5)).await;
        let error = run.result.unwrap_err();
        assert_eq!(
            error.to_string(),
            "script made too many effect calls (max_effects = 20)",
            "{source}"
        );
        assert_eq!(run.effects.records().len(), 20, "{source}");
    }
}

// ---------------------------------------------------------------- the pool

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_stops_a_run() {
    let harness = Harness::new(SandboxLimits {
        max_operations: u64::MAX / 2,
        ..SandboxLimits::default()
    });
    let (job, _) = harness.job("loop {}", &[], Duration::from_secs(30));
    let cancel = job.cancel.clone();
    let started = Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        cancel.store(true, Ordering::Relaxed);
    });
    let result = harness.pool.run(job).await;
    canceller.await.unwrap();
    assert_eq!(result.unwrap_err(), ScriptError::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(5));
}

struct PanickingEffects;

impl Effects for PanickingEffects {
    fn perform<'a>(
        &'a self,
        _context: &'a EffectContext,
        request: &'a EffectRequest,
    ) -> BoxFuture<'a, Result<Value, EffectError>> {
        if request.name == "slack.post" {
            panic!("effect implementation bug");
        }
        Box::pin(async { Ok(Value::Null) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_job_does_not_kill_its_worker() {
    let harness = Harness::build(
        SandboxLimits::default(),
        ScriptModules::empty(),
        Arc::new(PanickingEffects),
    );
    let single = ScriptPool::new(1, SandboxLimits::default().stack_size);
    for _ in 0..3 {
        let (job, _) = harness.job(
            r##"slack::post("#a", "boom")"##,
            &["slack"],
            Duration::from_secs(5),
        );
        let error = single.run(job).await.unwrap_err();
        assert!(
            error
                .to_string()
                .contains("the script run panicked: effect implementation bug"),
            "{error}"
        );
        let (job, _) = harness.job("40 + 2", &[], Duration::from_secs(5));
        assert_eq!(single.run(job).await.unwrap().as_int().unwrap(), 42);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_starts_its_threads_as_jobs_need_them_and_never_more_than_its_size() {
    let harness = Harness::new(SandboxLimits {
        max_operations: u64::MAX / 2,
        ..SandboxLimits::default()
    });
    let pool = Arc::new(ScriptPool::new(2, SandboxLimits::default().stack_size));
    assert_eq!(
        (pool.threads(), pool.started()),
        (2, 1),
        "one thread to start with"
    );
    for _ in 0..3 {
        let (job, _) = harness.job("1", &[], Duration::from_secs(5));
        assert_eq!(pool.run(job).await.unwrap().as_int().unwrap(), 1);
    }
    assert_eq!(pool.started(), 1, "one job at a time needs one thread");
    let mut running = Vec::new();
    let mut stops = Vec::new();
    for _ in 0..2 {
        let (busy, _) = harness.job("loop {}", &[], Duration::from_secs(30));
        stops.push(busy.cancel.clone());
        running.push(tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(busy).await }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(pool.started(), 2, "two jobs at once, two threads");
    // Both are busy and the pool is full: a third waits, and no thread starts for it.
    let (late, _) = harness.job("2", &[], Duration::from_millis(200));
    assert_timeout(
        &pool.run(late).await.unwrap_err(),
        Duration::from_millis(200),
    );
    assert_eq!(pool.started(), 2);
    for stop in stops {
        stop.store(true, Ordering::Relaxed);
    }
    for run in running {
        assert_eq!(run.await.unwrap().unwrap_err(), ScriptError::Cancelled);
    }
    let (job, _) = harness.job("3", &[], Duration::from_secs(5));
    assert_eq!(pool.run(job).await.unwrap().as_int().unwrap(), 3);
    assert_eq!(pool.started(), 2, "started threads stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_pool_makes_callers_wait_for_a_thread_until_their_deadline() {
    let harness = Harness::new(SandboxLimits {
        max_operations: u64::MAX / 2,
        ..SandboxLimits::default()
    });
    let pool = Arc::new(ScriptPool::new(1, SandboxLimits::default().stack_size));
    let (busy, _) = harness.job("loop {}", &[], Duration::from_secs(30));
    let stop_busy = busy.cancel.clone();
    let (queued, _) = harness.job("1", &[], Duration::from_secs(30));
    let running = tokio::spawn({
        let pool = pool.clone();
        async move { pool.run(busy).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waiting = tokio::spawn({
        let pool = pool.clone();
        async move { pool.run(queued).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The thread is busy and one job waits for it first: this one cannot get in.
    let (late, _) = harness.job("2", &[], Duration::from_millis(300));
    let started = Instant::now();
    let error = pool.run(late).await.unwrap_err();
    assert_timeout(&error, Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_millis(300) + MARGIN);
    stop_busy.store(true, Ordering::Relaxed);
    assert_eq!(running.await.unwrap().unwrap_err(), ScriptError::Cancelled);
    assert_eq!(waiting.await.unwrap().unwrap().as_int().unwrap(), 1);
}
