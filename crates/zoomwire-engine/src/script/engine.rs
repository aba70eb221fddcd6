//! The one constructor of Rhai engines. Nothing else in zoomwire creates one.
//!
//! [`build_engine`] starts from Rhai's standard library and then closes every
//! door a script could use to harm the process or other runs: every limit Rhai
//! has is set to a non-zero value (0 means unlimited), a wall-clock deadline,
//! a cancel flag and the memory budget are checked in `on_progress`, the
//! standard functions that could build more in one call than the limits
//! allow are guarded ([`super::guards`]), `eval` is disabled, `sleep` is
//! replaced by a function that fails, `print` goes to the run's log, and
//! `import` resolves only among the modules compiled from the scripts folder.
//! Variables are strict, so a typo is a compile error.
//!
//! Two kinds are built. The Script engine has the host functions and runs on
//! the [`ScriptPool`](super::pool::ScriptPool)'s large-stack threads. The
//! Condition engine is pure (only `zoom::uuid`), has no loops, and smaller
//! depth and collection limits, because it runs on the caller's thread.

use rhai::module_resolvers::ModuleResolver;
use rhai::{Engine, EvalAltResult, FuncRegistration};

use super::guards::register_guards;
use super::host::{register_condition_functions, register_script_functions};
use super::limits::{
    CONDITION_MAX_CALL_LEVELS, CONDITION_MAX_COLLECTION_SIZE, CONDITION_MAX_EXPR_DEPTH,
    CONDITION_MAX_FUNCTION_EXPR_DEPTH, SandboxLimits,
};
use super::modules::ScriptModules;
use super::run::{condition_progress, script_progress, take_scan_due};
use super::value::{SizeLimits, exceeds_depth, oversized};

/// Scripted functions one script may define.
const MAX_FUNCTIONS: usize = 1_000;

/// Which engine to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// Rule scripts and modules: host functions, loops, run deadline.
    Script,
    /// `when:` and `key:` expressions: pure, no loops, small limits.
    Condition,
}

/// Builds the engine of `kind` with `limits`, importing only from `modules`.
pub fn build_engine(limits: &SandboxLimits, modules: &ScriptModules, kind: EngineKind) -> Engine {
    build_engine_with_resolver(limits, modules.resolver(), kind)
}

/// Builds an engine with another resolver: the scripts folder's loader uses
/// it to resolve modules while they are being compiled.
pub(crate) fn build_engine_with_resolver(
    limits: &SandboxLimits,
    resolver: impl ModuleResolver + 'static,
    kind: EngineKind,
) -> Engine {
    let limits = limits.effective();
    let mut engine = Engine::new();
    // No string interner: it is one lock for the whole engine, taken to write
    // by every interpolation, string `let` and `for` a script evaluates, and
    // with Rhai's `sync` feature a thread that finds it taken sleeps 10 ms
    // before trying again. Runs on several threads share one engine.
    engine.set_max_strings_interned(0);
    set_limits(&mut engine, &limits, kind);
    engine.set_module_resolver(resolver);
    engine.disable_symbol("eval");
    engine.set_strict_variables(true);
    forbid_sleep(&mut engine);
    register_guards(&mut engine, limits.max_key_size, limits.max_value_depth);
    match kind {
        EngineKind::Script => {
            let max_operations = limits.max_operations;
            engine.on_progress(move |_| script_progress(max_operations));
            let sizes = SizeLimits::of_script(&limits);
            measure_variables(&mut engine, sizes);
            register_script_functions(&mut engine, sizes);
        }
        EngineKind::Condition => {
            let (max_operations, timeout) = (limits.max_operations, limits.condition_timeout);
            engine.on_progress(move |_| condition_progress(max_operations, timeout));
            limit_variable_depth(&mut engine, limits.max_value_depth);
            for keyword in ["loop", "while", "do", "for"] {
                engine.disable_symbol(keyword);
            }
            register_condition_functions(&mut engine);
        }
    }
    engine
}

/// Sets every Rhai limit; `limits` is already effective (no zeros).
fn set_limits(engine: &mut Engine, limits: &SandboxLimits, kind: EngineKind) {
    engine
        .set_max_operations(limits.max_operations)
        .set_max_string_size(limits.max_string_size)
        .set_max_modules(limits.max_modules)
        .set_max_variables(limits.max_variables)
        .set_max_functions(MAX_FUNCTIONS);
    match kind {
        EngineKind::Script => {
            engine
                .set_max_call_levels(limits.max_call_levels)
                .set_max_expr_depths(limits.max_expr_depth, limits.max_function_expr_depth)
                .set_max_array_size(limits.max_array_size)
                .set_max_map_size(limits.max_map_size);
        }
        EngineKind::Condition => {
            engine
                .set_max_call_levels(limits.max_call_levels.min(CONDITION_MAX_CALL_LEVELS))
                .set_max_expr_depths(
                    limits.max_expr_depth.min(CONDITION_MAX_EXPR_DEPTH),
                    limits
                        .max_function_expr_depth
                        .min(CONDITION_MAX_FUNCTION_EXPR_DEPTH),
                )
                .set_max_array_size(limits.max_array_size.min(CONDITION_MAX_COLLECTION_SIZE))
                .set_max_map_size(limits.max_map_size.min(CONDITION_MAX_COLLECTION_SIZE));
        }
    }
}

/// Measures the script's variables every few milliseconds, failing the run
/// when one is larger or deeper than the limits allow (map keys included,
/// which Rhai does not count).
///
/// Rhai checks sizes when a function returns and when an indexed item is
/// assigned, but not the container an item is assigned into: `m[key] = v` in a
/// loop grows a map without bound, and `a[i] = big` fills an array with copies
/// of `big`. Nor does it check plain assignment, so `m = #{x: m}` in a loop
/// nests a value deeper and deeper. The scan catches all three within
/// `SCAN_INTERVAL` of growth. It runs when a variable is read (Rhai gives its
/// scope to the variable resolver only), at most once per interval, and
/// measures the variables of the running function and its `this`.
fn measure_variables(engine: &mut Engine, sizes: SizeLimits) {
    // `on_var` is marked deprecated as "volatile", not as going away.
    #[allow(deprecated)]
    engine.on_var(move |_, _, context| {
        if !take_scan_due() {
            return Ok(None);
        }
        let variables = context
            .scope()
            .iter_raw()
            .filter(|(_, is_constant, _)| !is_constant)
            .map(|(_, _, value)| value);
        // `this` of a method call lives in the caller's scope, out of sight.
        for value in variables.chain(context.this_ptr()) {
            if let Some(what) = oversized(value, &sizes) {
                return Err(EvalAltResult::ErrorDataTooLarge(
                    what.to_string(),
                    rhai::Position::NONE,
                )
                .into());
            }
        }
        Ok(None)
    });
}

/// Fails a condition as soon as it reads a variable nested deeper than
/// `max_depth`. Conditions run on the caller's stack, where a value nested a
/// thousand levels deep (a closure given to `reduce` can build one) already
/// overflows a debug build's stack when it is copied or dropped. Only closure
/// parameters and locals are checked: `event`, `meta` and `vars` come from
/// the host.
fn limit_variable_depth(engine: &mut Engine, max_depth: usize) {
    // `on_var` is marked deprecated as "volatile", not as going away.
    #[allow(deprecated)]
    engine.on_var(move |name, _, context| {
        if super::SCOPE_NAMES.contains(&name) {
            return Ok(None);
        }
        match context.scope().get(name) {
            Some(value) if exceeds_depth(value, max_depth) => Err(
                EvalAltResult::ErrorDataTooLarge("Depth of value".into(), rhai::Position::NONE)
                    .into(),
            ),
            _ => Ok(None),
        }
    });
}

/// Replaces the standard `sleep`, which blocks the thread, with one that fails.
/// (`disable_symbol` does not remove functions, only keywords.)
fn forbid_sleep(engine: &mut Engine) {
    fn refuse() -> Result<(), Box<EvalAltResult>> {
        Err("sleep is not available in the sandbox".into())
    }
    FuncRegistration::new("sleep")
        .with_volatility(true)
        .register_into_engine(engine, |_: rhai::INT| refuse());
    FuncRegistration::new("sleep")
        .with_volatility(true)
        .register_into_engine(engine, |_: rhai::FLOAT| refuse());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::voluntary_switches;

    fn engine(kind: EngineKind) -> Engine {
        build_engine(&SandboxLimits::default(), &ScriptModules::empty(), kind)
    }

    /// How many times `work` put this thread to sleep or had it wait on a lock.
    fn times_blocked(work: impl FnOnce()) -> u64 {
        let before = voluntary_switches();
        work();
        voluntary_switches() - before
    }

    #[test]
    fn runs_on_several_threads_never_wait_for_one_another_in_the_engine() {
        // Rhai's string interner was one lock in the engine that every
        // interpolation, string `let` and `for` takes to write; a thread that
        // found it taken slept 10 ms (the `sync` feature) and tried again:
        // 9 to 16 times a thread in this test, against 0 or 1 without it (a
        // wait for the allocator's lock; nothing of the engine's).
        for kind in [EngineKind::Script, EngineKind::Condition] {
            assert_eq!(engine(kind).max_strings_interned(), 0);
        }
        let engine = std::sync::Arc::new(engine(EngineKind::Script));
        let script = r#"let a = "x"; let b = `${a}-${a}`; for i in 0..3 { let c = `${i}`; } b"#;
        let ast = std::sync::Arc::new(engine.compile(script).unwrap());
        // Measured once every thread is up and has run the script (starting
        // a thread maps its stack and its first runs grow the heap, which can
        // hold up the others' page faults).
        let started = std::sync::Arc::new(std::sync::Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (engine, ast, started) = (engine.clone(), ast.clone(), started.clone());
                std::thread::spawn(move || {
                    let run = || assert_eq!(engine.eval_ast::<String>(&ast).unwrap(), "x-x");
                    (0..100).for_each(|_| run());
                    started.wait();
                    let blocked = times_blocked(|| (0..20_000).for_each(|_| run()));
                    // No thread ends (unmapping its stack) while another counts.
                    started.wait();
                    blocked
                })
            })
            .collect();
        for thread in threads {
            let blocked = thread.join().unwrap();
            assert!(blocked <= 3, "blocked {blocked} times");
        }
    }

    #[test]
    fn every_limit_is_set_and_none_is_unlimited() {
        let limits = SandboxLimits::default();
        let script = engine(EngineKind::Script);
        assert_eq!(script.max_operations(), limits.max_operations);
        assert_eq!(script.max_call_levels(), 32);
        assert_eq!(script.max_expr_depth(), limits.max_expr_depth);
        assert_eq!(
            script.max_function_expr_depth(),
            limits.max_function_expr_depth
        );
        assert_eq!(script.max_string_size(), limits.max_string_size);
        assert_eq!(script.max_array_size(), limits.max_array_size);
        assert_eq!(script.max_map_size(), limits.max_map_size);
        assert_eq!(script.max_modules(), limits.max_modules);
        assert_eq!(script.max_variables(), limits.max_variables);
        assert_eq!(script.max_functions(), MAX_FUNCTIONS);

        let condition = engine(EngineKind::Condition);
        assert_eq!(condition.max_call_levels(), CONDITION_MAX_CALL_LEVELS);
        assert_eq!(condition.max_array_size(), CONDITION_MAX_COLLECTION_SIZE);
        assert_eq!(condition.max_map_size(), CONDITION_MAX_COLLECTION_SIZE);
        assert_eq!(condition.max_expr_depth(), CONDITION_MAX_EXPR_DEPTH);
        assert_eq!(condition.max_operations(), limits.max_operations);
    }

    #[test]
    fn zero_limits_never_reach_rhai() {
        let limits = SandboxLimits {
            max_operations: 0,
            max_string_size: 0,
            max_array_size: 0,
            max_map_size: 0,
            max_expr_depth: 0,
            max_call_levels: 0,
            ..SandboxLimits::default()
        };
        let script = build_engine(&limits, &ScriptModules::empty(), EngineKind::Script);
        assert!(script.max_operations() > 0);
        assert!(script.max_string_size() > 0);
        assert!(script.max_array_size() > 0);
        assert!(script.max_map_size() > 0);
        assert!(script.max_expr_depth() > 0);
        assert!(script.max_call_levels() > 0);
    }

    #[test]
    fn sleep_and_eval_are_refused() {
        for kind in [EngineKind::Script, EngineKind::Condition] {
            let engine = engine(kind);
            for source in ["sleep(10)", "sleep(0.5)", "Fn(\"sleep\").call(3)"] {
                let error = engine.eval::<()>(source).unwrap_err();
                assert!(
                    error.to_string().contains("sleep is not available"),
                    "{source}: {error}"
                );
            }
            assert!(engine.compile("eval(\"1\")").is_err());
        }
    }

    #[test]
    fn conditions_have_no_loops_and_no_effects() {
        let condition = engine(EngineKind::Condition);
        assert!(
            condition
                .compile_expression("[1].map(|x| { loop {} })")
                .is_err()
        );
        assert!(
            condition
                .compile_expression(r##"slack::post("#a", "x")"##)
                .is_err()
                || condition
                    .eval_expression::<rhai::Dynamic>(r##"slack::post("#a", "x")"##)
                    .is_err()
        );
    }
}
