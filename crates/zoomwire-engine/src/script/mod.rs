//! The script sandbox: where rule scripts and conditions are compiled and run.
//!
//! A [`Sandbox`] holds the two engines built by [`engine::build_engine`] (the
//! only place engines are made): the Script engine, whose host functions are
//! the only way out to the world, and the pure Condition engine for `when:`
//! and `key:`. Both share the limits of [`SandboxLimits`] and import only the
//! modules compiled from the scripts folder ([`ScriptModules`]).
//!
//! Loading compiles; running never parses. Scripts run on the bounded
//! [`ScriptPool`] of large-stack threads, never on the async reactor.
//! Conditions evaluate on the caller's thread in about a microsecond, since
//! they cannot loop, call effects or build deep values.
//!
//! The event reaches both as the shared, read-only `event` constant, with
//! `meta` and `vars` beside it: a script can copy and change a copy, never the
//! value other rules see.

pub(crate) mod allocator;
pub mod engine;
mod error;
pub mod event_paths;
mod guards;
mod host;
pub mod inline;
pub mod last_effect;
pub mod limits;
mod memory;
pub mod modules;
pub mod pool;
mod run;
mod value;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use rhai::{AST, Dynamic, Engine, EvalAltResult, Position, Scope};

pub use engine::{EngineKind, build_engine};
pub use error::{ScriptError, ScriptSyntaxError};
pub use limits::SandboxLimits;
pub use modules::{ScriptFileError, ScriptModules};
pub use pool::{ScriptJob, ScriptPool};

use error::{Evaluation, memory_limit, result_too_large, script_error, syntax_error};
use memory::{budget_exceeded, enter_budget};
use run::{condition_terminated, reset_condition_clock};
use value::{SizeLimits, oversized};

pub use allocator::limit_malloc_arenas;
pub use memory::format_bytes;

/// The names scripts and conditions read, pushed as constants.
pub(crate) const SCOPE_NAMES: [&str; 3] = ["event", "meta", "vars"];

/// The configured `vars` as scripts and conditions read them: the map as
/// configured (an empty one if it cannot be converted, which a JSON object
/// always can).
pub fn vars_value(vars: &serde_json::Map<String, serde_json::Value>) -> Dynamic {
    rhai::serde::to_dynamic(vars).unwrap_or_else(|_| Dynamic::from_map(rhai::Map::new()))
}

/// Compiles and evaluates scripts and conditions under one set of limits.
pub struct Sandbox {
    limits: SandboxLimits,
    modules: ScriptModules,
    script_engine: Arc<Engine>,
    condition_engine: Arc<Engine>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("limits", &self.limits)
            .field("modules", &self.modules)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Builds both engines. `limits` are made effective (see [`SandboxLimits::effective`]).
    pub fn new(limits: SandboxLimits, modules: ScriptModules) -> Sandbox {
        let limits = limits.effective();
        let script_engine = Arc::new(build_engine(&limits, &modules, EngineKind::Script));
        let condition_engine = Arc::new(build_engine(&limits, &modules, EngineKind::Condition));
        Sandbox {
            limits,
            modules,
            script_engine,
            condition_engine,
        }
    }

    /// The limits in force (zeros already replaced by defaults).
    pub fn limits(&self) -> &SandboxLimits {
        &self.limits
    }

    /// The modules scripts may import.
    pub fn modules(&self) -> &ScriptModules {
        &self.modules
    }

    /// Compiles a rule script. Imports are resolved now, so a missing module
    /// or an import leaving the scripts folder is a compile error.
    pub fn compile_script(&self, source: &str) -> Result<AST, ScriptSyntaxError> {
        let engine = &self.script_engine;
        engine
            .compile_into_self_contained(&compile_scope(), source)
            .map_err(|error| self.script_compile_error(source, *error))
    }

    /// Compiles one expression, for `when:` and `key:`.
    pub fn compile_expression(&self, source: &str) -> Result<AST, ScriptSyntaxError> {
        let engine = &self.condition_engine;
        engine
            .compile_expression_with_scope(&compile_scope(), source)
            .map_err(|error| syntax_error(engine, &error))
    }

    /// The scope conditions read: `event`, `meta` and `vars` as constants.
    /// Build it once per event and pass it to every rule's condition.
    pub fn expression_scope(
        &self,
        event: &Dynamic,
        meta: &Dynamic,
        vars: &Dynamic,
    ) -> Scope<'static> {
        // One plain (unshared) copy per event: property chains in every
        // condition then read by reference instead of through a lock and a clone.
        run_scope(&event.flatten_clone(), meta, vars)
    }

    /// Evaluates a compiled expression on the calling thread, bounded by
    /// `max_operations`, `condition_timeout` and `max_memory`. The scope is
    /// left as found.
    pub fn eval_expression(
        &self,
        scope: &mut Scope<'static>,
        ast: &AST,
    ) -> Result<Dynamic, ScriptError> {
        let engine = &self.condition_engine;
        let scope_len = scope.len();
        reset_condition_clock();
        let budget = enter_budget(self.limits.max_memory);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let outcome = engine.eval_ast_with_scope::<Dynamic>(scope, ast);
            ended_early(outcome, condition_terminated())
        }));
        scope.rewind(scope_len);
        let evaluation = Evaluation::condition(&self.limits);
        let exceeded = budget_exceeded();
        drop(budget);
        if exceeded {
            return Err(memory_limit(evaluation));
        }
        match outcome {
            Ok(Ok(value)) => self.check_result(value),
            Ok(Err(error)) => Err(script_error(engine, error, evaluation, &[])),
            Err(panic) => Err(ScriptError::runtime(format!(
                "internal error: the condition panicked: {}",
                panic_text(panic.as_ref())
            ))),
        }
    }

    /// The engine scripts run on (the pool's workers use it).
    pub(crate) fn script_engine(&self) -> &Engine {
        &self.script_engine
    }

    /// Refuses a result too deep to leave the thread that built it, or too
    /// large to convert and record (a shared string counts once per place).
    pub(crate) fn check_result(&self, value: Dynamic) -> Result<Dynamic, ScriptError> {
        match oversized(&value, &SizeLimits::of_script(&self.limits)) {
            None => Ok(value),
            Some(broken) => Err(result_too_large(broken, &self.limits)),
        }
    }

    fn script_compile_error(&self, source: &str, error: EvalAltResult) -> ScriptSyntaxError {
        match error {
            EvalAltResult::ErrorParsing(kind, position) => syntax_error(
                &self.script_engine,
                &rhai::ParseError(kind.into(), position),
            ),
            EvalAltResult::ErrorInModule(path, inner, _) => {
                let message = match *inner {
                    EvalAltResult::ErrorRuntime(message, _) => message.to_string(),
                    other => other.to_string(),
                };
                ScriptSyntaxError::at(message, import_position(source, &path))
            }
            other => ScriptSyntaxError::at(other.to_string(), other.position()),
        }
    }
}

/// The scope scripts are compiled with: the names exist (strict variables)
/// but hold no value, so the optimizer cannot fold them.
fn compile_scope() -> Scope<'static> {
    let mut scope = Scope::new();
    for name in SCOPE_NAMES {
        scope.push_dynamic(name, Dynamic::UNIT);
    }
    scope
}

/// The scope a run or a condition reads.
pub(crate) fn run_scope(event: &Dynamic, meta: &Dynamic, vars: &Dynamic) -> Scope<'static> {
    let mut scope = Scope::new();
    for (name, value) in SCOPE_NAMES.into_iter().zip([event, meta, vars]) {
        scope.push_constant_dynamic(name, value.clone());
    }
    scope
}

/// The evaluation's outcome, or the end a native function gave it as its
/// last step (with no operation after it to fail).
pub(crate) fn ended_early(
    outcome: Result<Dynamic, Box<EvalAltResult>>,
    terminated: Option<&'static str>,
) -> Result<Dynamic, Box<EvalAltResult>> {
    match (outcome, terminated) {
        (Ok(_), Some(token)) => {
            Err(EvalAltResult::ErrorTerminated(token.into(), Position::NONE).into())
        }
        (outcome, _) => outcome,
    }
}

/// Where `import "path"` is written in `source` (Rhai does not say).
fn import_position(source: &str, path: &str) -> Position {
    let offset = [format!("\"{path}\""), format!("`{path}`")]
        .iter()
        .filter_map(|quoted| source.find(quoted.as_str()))
        .min();
    let Some(offset) = offset else {
        return Position::new(1, 1);
    };
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.chars().count(), |nl| {
        before[nl + 1..].chars().count()
    }) + 1;
    Position::new(
        u16::try_from(line).unwrap_or(u16::MAX),
        u16::try_from(column).unwrap_or(u16::MAX),
    )
}

pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// This thread's voluntary context switches so far: the times it went to
/// sleep or waited on a lock (preemption and a busy host do not count).
#[cfg(test)]
pub(crate) fn voluntary_switches() -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("voluntary_ctxt_switches:"))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox() -> Sandbox {
        Sandbox::new(SandboxLimits::default(), ScriptModules::empty())
    }

    #[test]
    fn finds_the_position_of_an_import() {
        let source = "let a = 1;\n  import \"x/y\" as m;";
        assert_eq!(import_position(source, "x/y"), Position::new(2, 10));
        assert_eq!(import_position(source, "zzz"), Position::new(1, 1));
    }

    #[test]
    fn compile_errors_have_positions_relative_to_the_source() {
        let sandbox = sandbox();
        let error = sandbox
            .compile_script("let x = 1;\nlet y = x +;\n")
            .unwrap_err();
        assert_eq!(error.line, 2);
        let error = sandbox.compile_script("import \"nope\" as n;").unwrap_err();
        assert_eq!(
            error.to_string(),
            "1:8: module `nope` not found in the scripts folder"
        );
        let error = sandbox.compile_expression("event.x ==").unwrap_err();
        assert_eq!(error.line, 1);
        let error = sandbox.compile_script("undefined_thing + 1").unwrap_err();
        assert!(error.message.contains("undefined_thing"), "{error}");
    }

    #[test]
    fn evaluates_conditions_and_rewinds_the_scope() {
        let sandbox = sandbox();
        let event: Dynamic = serde_json::from_str::<Dynamic>(r#"{"payload": {"duration": 7}}"#)
            .unwrap()
            .into_read_only()
            .into_shared();
        let mut scope = sandbox.expression_scope(&event, &Dynamic::UNIT, &Dynamic::UNIT);
        let ast = sandbox
            .compile_expression("event.payload.duration >= 5")
            .unwrap();
        let value = sandbox.eval_expression(&mut scope, &ast).unwrap();
        assert!(value.as_bool().unwrap());
        assert_eq!(scope.len(), 3);
    }
}
