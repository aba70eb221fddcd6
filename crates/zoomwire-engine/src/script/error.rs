//! Errors of the sandbox, and the translation of Rhai's errors into them.
//!
//! A script that breaks a limit must learn which limit it broke, by its
//! configuration name and value ("call stack too deep (max_call_levels =
//! 32)"), because that is what the user can change. Rhai wraps an error raised
//! deep in a call chain in one `ErrorInFunctionCall` per level, so the limit is
//! found on the innermost error. An effect error thrown into the script and
//! not caught is given back as the [`EffectError`] it was, so that the
//! executor can decide on a retry by its kind.

use std::time::Duration;

use rhai::{Dynamic, Engine, EvalAltResult, LexError, ParseError, ParseErrorType, Position};

use super::limits::SandboxLimits;
use super::memory::format_bytes;
use super::run::{
    CANCEL_TOKEN, EFFECTS_TOKEN, MEMORY_TOKEN, OPERATIONS_TOKEN, TIMEOUT_TOKEN, TOO_LARGE_TOKEN,
};
use super::value::{SizeLimits, exceeds_depth, oversized};
use crate::duration::format_duration;
use crate::effects::EffectError;

/// The longest message a runtime error keeps.
const MAX_MESSAGE_CHARS: usize = 2_000;
/// How deep a thrown value may be for its text to appear in an error message.
const MAX_SHOWN_DEPTH: usize = 32;

/// Why a script or condition run failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScriptError {
    /// A sandbox limit was reached; `limit` is its configuration name.
    #[error("{message}")]
    Limit { limit: String, message: String },
    /// The run's wall-clock deadline passed.
    #[error("run exceeded its {} timeout", format_duration(*after))]
    Timeout { after: Duration },
    /// The run was cancelled (its cancel flag was set, or its caller gave up).
    #[error("run was cancelled")]
    Cancelled,
    /// An effect error the script did not catch.
    #[error("{0}")]
    Effect(EffectError),
    /// Any other error: a failed operation, a `throw`, a missing function.
    #[error("{}", runtime_display(message, *line, *column))]
    Runtime {
        message: String,
        line: Option<usize>,
        column: Option<usize>,
    },
}

impl ScriptError {
    pub(crate) fn runtime(message: impl Into<String>) -> ScriptError {
        ScriptError::Runtime {
            message: message.into(),
            line: None,
            column: None,
        }
    }

    fn limit(limit: &str, message: String) -> ScriptError {
        ScriptError::Limit {
            limit: limit.to_string(),
            message,
        }
    }
}

fn runtime_display(message: &str, line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!("{line}:{column}: {message}"),
        (Some(line), None) => format!("{line}: {message}"),
        _ => message.to_string(),
    }
}

/// A script or expression that does not compile. Positions are 1-based and
/// relative to the source that was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{column}: {message}")]
pub struct ScriptSyntaxError {
    pub message: String,
    pub line: usize,
    pub column: usize,
}

impl ScriptSyntaxError {
    pub(crate) fn at(message: impl Into<String>, position: Position) -> ScriptSyntaxError {
        ScriptSyntaxError {
            message: message.into(),
            line: position.line().unwrap_or(1),
            column: position.position().unwrap_or(1),
        }
    }
}

/// What was evaluated, for the wording and the limits not held by the engine.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Evaluation {
    /// A condition (else a script run).
    pub condition: bool,
    /// The run's timeout, or `condition_timeout`.
    pub timeout: Duration,
    pub max_value_depth: usize,
    pub max_key_size: usize,
    pub max_memory: usize,
    pub max_effects: usize,
}

impl Evaluation {
    /// A script run (or module code at load) that had `timeout`.
    pub(crate) fn script(timeout: Duration, limits: &SandboxLimits) -> Evaluation {
        Evaluation {
            condition: false,
            timeout,
            max_value_depth: limits.max_value_depth,
            max_key_size: limits.max_key_size,
            max_memory: limits.max_memory,
            max_effects: limits.max_effects,
        }
    }

    /// A `when:` or `key:` expression.
    pub(crate) fn condition(limits: &SandboxLimits) -> Evaluation {
        Evaluation {
            condition: true,
            timeout: limits.condition_timeout,
            ..Evaluation::script(limits.condition_timeout, limits)
        }
    }

    fn noun(self) -> &'static str {
        if self.condition {
            "condition"
        } else {
            "script"
        }
    }
}

/// Translates a compile error of `engine`.
pub(crate) fn syntax_error(engine: &Engine, error: &ParseError) -> ScriptSyntaxError {
    let ParseError(kind, position) = error;
    ScriptSyntaxError::at(parse_error_message(engine, kind), *position)
}

pub(crate) fn parse_error_message(engine: &Engine, kind: &ParseErrorType) -> String {
    match kind {
        ParseErrorType::ExprTooDeep => format!(
            "expression nested too deeply (max_expr_depth = {}, max_function_expr_depth = {})",
            engine.max_expr_depth(),
            engine.max_function_expr_depth()
        ),
        ParseErrorType::BadInput(LexError::ImproperSymbol(symbol, _)) if symbol == "eval" => {
            "eval is not available in the sandbox".to_string()
        }
        ParseErrorType::Reserved(symbol) if symbol == "eval" => {
            "eval is not available in the sandbox".to_string()
        }
        ParseErrorType::BadInput(LexError::ImproperSymbol(symbol, _))
            if matches!(symbol.as_str(), "loop" | "while" | "do" | "for") =>
        {
            format!("`{symbol}` is not allowed in a condition: use a rule script for loops")
        }
        other => other.to_string(),
    }
}

/// Translates a runtime error of `engine`. `thrown` holds the effect errors
/// the host functions threw into this run, to recognise an uncaught one.
pub(crate) fn script_error(
    engine: &Engine,
    error: Box<EvalAltResult>,
    evaluation: Evaluation,
    thrown: &[EffectError],
) -> ScriptError {
    classify(engine, error.unwrap_inner(), evaluation, thrown)
        .unwrap_or_else(|| runtime_error(engine, error))
}

/// The limit, timeout or effect error `inner` is, if it is one.
fn classify(
    engine: &Engine,
    inner: &EvalAltResult,
    evaluation: Evaluation,
    thrown: &[EffectError],
) -> Option<ScriptError> {
    match inner {
        EvalAltResult::ErrorTooManyOperations(_) => Some(operation_limit(engine, evaluation)),
        EvalAltResult::ErrorStackOverflow(_) => Some(ScriptError::limit(
            "max_call_levels",
            format!(
                "call stack too deep (max_call_levels = {})",
                engine.max_call_levels()
            ),
        )),
        EvalAltResult::ErrorTooManyModules(_) => Some(ScriptError::limit(
            "max_modules",
            format!(
                "too many modules imported (max_modules = {})",
                engine.max_modules()
            ),
        )),
        EvalAltResult::ErrorTooManyVariables(_) => Some(ScriptError::limit(
            "max_variables",
            format!(
                "too many variables (max_variables = {})",
                engine.max_variables()
            ),
        )),
        EvalAltResult::ErrorDataTooLarge(what, _) => data_too_large(engine, what, evaluation),
        EvalAltResult::ErrorTerminated(token, _) => terminated(engine, token, evaluation),
        EvalAltResult::ErrorRuntime(value, _) => {
            uncaught_effect_error(value, thrown).map(ScriptError::Effect)
        }
        _ => None,
    }
}

fn operation_limit(engine: &Engine, evaluation: Evaluation) -> ScriptError {
    ScriptError::limit(
        "max_operations",
        format!(
            "{} exceeded the operation limit (max_operations = {})",
            evaluation.noun(),
            engine.max_operations()
        ),
    )
}

fn data_too_large(engine: &Engine, what: &str, evaluation: Evaluation) -> Option<ScriptError> {
    let limit = size_limit(what)?;
    let (noun, max) = match limit {
        "max_value_depth" => {
            let max = evaluation.max_value_depth;
            return Some(ScriptError::limit(
                limit,
                format!("value nested too deeply (max_value_depth = {max})"),
            ));
        }
        "max_key_size" => ("object map key", evaluation.max_key_size),
        "max_string_size" => ("string", engine.max_string_size()),
        "max_array_size" => ("array", engine.max_array_size()),
        _ => ("object map", engine.max_map_size()),
    };
    Some(ScriptError::limit(
        limit,
        format!("{noun} too large ({limit} = {max})"),
    ))
}

/// The setting that bounds what Rhai's `ErrorDataTooLarge` names (and
/// [`super::value::oversized`], which names keys and depth too).
fn size_limit(what: &str) -> Option<&'static str> {
    if what.contains("Depth") {
        Some("max_value_depth")
    } else if what.contains("key") {
        Some("max_key_size")
    } else if what.contains("string") {
        Some("max_string_size")
    } else if what.contains("array") || what.contains("BLOB") {
        Some("max_array_size")
    } else if what.contains("map") {
        Some("max_map_size")
    } else {
        None
    }
}

/// The error of a result that breaks the size limit `what` names.
pub(crate) fn result_too_large(what: &str, limits: &SandboxLimits) -> ScriptError {
    let limit = size_limit(what).unwrap_or("max_string_size");
    let max = match limit {
        "max_value_depth" => {
            return ScriptError::limit(
                limit,
                format!(
                    "result nested too deeply (max_value_depth = {})",
                    limits.max_value_depth
                ),
            );
        }
        "max_key_size" => limits.max_key_size,
        "max_array_size" => limits.max_array_size,
        "max_map_size" => limits.max_map_size,
        _ => limits.max_string_size,
    };
    ScriptError::limit(limit, format!("result too large ({limit} = {max})"))
}

fn terminated(engine: &Engine, token: &Dynamic, evaluation: Evaluation) -> Option<ScriptError> {
    let token = token.read_lock::<rhai::ImmutableString>()?;
    let timeout = evaluation.timeout;
    match token.as_str() {
        TIMEOUT_TOKEN if evaluation.condition => Some(ScriptError::limit(
            "condition_timeout",
            format!(
                "condition exceeded its {} timeout (condition_timeout = {})",
                format_duration(timeout),
                format_duration(timeout)
            ),
        )),
        TIMEOUT_TOKEN => Some(ScriptError::Timeout { after: timeout }),
        CANCEL_TOKEN => Some(ScriptError::Cancelled),
        OPERATIONS_TOKEN => Some(operation_limit(engine, evaluation)),
        MEMORY_TOKEN => Some(memory_limit(evaluation)),
        token if token.starts_with(TOO_LARGE_TOKEN) => {
            data_too_large(engine, &token[TOO_LARGE_TOKEN.len()..], evaluation)
        }
        EFFECTS_TOKEN => Some(ScriptError::limit(
            "max_effects",
            format!(
                "script made too many effect calls (max_effects = {})",
                evaluation.max_effects
            ),
        )),
        _ => None,
    }
}

/// The error of an evaluation that passed its memory budget.
pub(crate) fn memory_limit(evaluation: Evaluation) -> ScriptError {
    let max = format_bytes(evaluation.max_memory);
    ScriptError::limit(
        "max_memory",
        format!(
            "{} exceeded its memory budget (max_memory = {max})",
            evaluation.noun()
        ),
    )
}

/// The effect error whose map the script let escape, if `value` is one.
fn uncaught_effect_error(value: &Dynamic, thrown: &[EffectError]) -> Option<EffectError> {
    if thrown.is_empty() {
        return None;
    }
    let map = value.read_lock::<rhai::Map>()?;
    let field = |name: &str| {
        map.get(name).and_then(|v| {
            v.read_lock::<rhai::ImmutableString>()
                .map(|s| s.to_string())
        })
    };
    let (effect, message) = (field("effect")?, field("message")?);
    thrown
        .iter()
        .rev()
        .find(|e| e.effect == effect && e.message == message)
        .cloned()
}

fn runtime_error(engine: &Engine, mut error: Box<EvalAltResult>) -> ScriptError {
    let position = error.take_position();
    let message = match error.unwrap_inner() {
        EvalAltResult::ErrorParsing(kind, _) => parse_error_message(engine, kind),
        EvalAltResult::ErrorRuntime(value, _)
            if matches!(*error, EvalAltResult::ErrorRuntime(..)) && value.is_string() =>
        {
            value.to_string()
        }
        EvalAltResult::ErrorRuntime(value, _) | EvalAltResult::ErrorIndexNotFound(value, _)
            if exceeds_depth(value, MAX_SHOWN_DEPTH) =>
        {
            "the script threw a value nested too deeply to show".to_string()
        }
        EvalAltResult::ErrorRuntime(value, _) | EvalAltResult::ErrorIndexNotFound(value, _)
            if oversized(value, &shown_sizes(engine)).is_some() =>
        {
            "the script threw a value too large to show".to_string()
        }
        _ => error.to_string(),
    };
    ScriptError::Runtime {
        message: truncate(message),
        line: position.line(),
        column: position.position(),
    }
}

/// How large a thrown value may be for its text to appear in a message:
/// printing it must not build more than the string limit.
fn shown_sizes(engine: &Engine) -> SizeLimits {
    SizeLimits {
        array: engine.max_array_size(),
        map: engine.max_map_size(),
        string: engine.max_string_size(),
        key: engine.max_string_size(),
        depth: MAX_SHOWN_DEPTH,
    }
}

fn truncate(mut message: String) -> String {
    if let Some((cut, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS) {
        message.truncate(cut);
        message.push_str("...");
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_errors_name_the_limit_through_call_chains() {
        let mut engine = Engine::new();
        engine.set_max_call_levels(5).set_max_operations(1000);
        let error = engine
            .run("fn f(n) { f(n + 1) } f(0)")
            .expect_err("recursion must fail");
        let error = script_error(
            &engine,
            error,
            Evaluation::script(Duration::from_secs(1), &SandboxLimits::default()),
            &[],
        );
        assert_eq!(
            error.to_string(),
            "call stack too deep (max_call_levels = 5)"
        );
        let error = engine.run("loop {}").expect_err("loop must fail");
        let error = script_error(
            &engine,
            error,
            Evaluation::condition(&SandboxLimits::default()),
            &[],
        );
        assert_eq!(
            error,
            ScriptError::Limit {
                limit: "max_operations".into(),
                message: "condition exceeded the operation limit (max_operations = 1000)".into()
            }
        );
    }

    #[test]
    fn runtime_errors_keep_their_position() {
        let engine = Engine::new();
        let error = engine.run("let x = 1;\n  throw \"boom\";").unwrap_err();
        let error = script_error(
            &engine,
            error,
            Evaluation::script(Duration::from_secs(1), &SandboxLimits::default()),
            &[],
        );
        assert_eq!(error.to_string(), "2:3: boom");
    }

    #[test]
    fn timeouts_read_as_durations() {
        let error = ScriptError::Timeout {
            after: Duration::from_secs(2),
        };
        assert_eq!(error.to_string(), "run exceeded its 2s timeout");
    }

    #[test]
    fn long_messages_are_cut() {
        let long = "é".repeat(MAX_MESSAGE_CHARS + 10);
        let cut = truncate(long);
        assert_eq!(cut.chars().count(), MAX_MESSAGE_CHARS + 3);
    }
}
