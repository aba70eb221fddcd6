//! The sandbox's limits: how much a script may compute, nest, allocate and
//! import, how much memory it may hold, how much it may log and how many
//! effects it may make, how long a condition may take, and the threads
//! scripts run on.
//!
//! These are configuration (read by serde, unknown keys refused); the engine
//! constructor reads them through [`SandboxLimits::effective`], which replaces
//! zeros and out-of-range values with safe ones. That matters because for most
//! of Rhai's limits 0 means *unlimited*, and because a call depth above 32
//! can overflow the native stack and abort the whole process.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::duration::parse_seconds_or_duration;
use crate::effects::gateway::OutputLimits;

/// The deepest script call stack allowed, whatever the configuration says.
pub const MAX_CALL_LEVELS_CAP: usize = 32;
/// The deepest expression nesting allowed, at the top level and in functions,
/// whatever the configuration says: the parser recurses on the caller's
/// stack, and each call level may nest this deep.
pub const MAX_EXPR_DEPTH_CAP: usize = 64;
pub const MAX_FUNCTION_EXPR_DEPTH_CAP: usize = 32;
/// Call depth of conditions: they run on the caller's (possibly small) stack.
pub const CONDITION_MAX_CALL_LEVELS: usize = 8;
/// Expression depth of conditions, at the top level and inside closures.
pub const CONDITION_MAX_EXPR_DEPTH: usize = 32;
pub const CONDITION_MAX_FUNCTION_EXPR_DEPTH: usize = 16;
/// Array and map sizes in conditions. A nested value `[[[...]]]` is as deep
/// as it is large, and conditions run on the caller's stack, so these stay
/// small; values injected by the host (the event) are not counted.
pub const CONDITION_MAX_COLLECTION_SIZE: usize = 1_000;
/// The smallest stack a script thread gets, whatever the configuration says:
/// twice what the stack-hungriest recursion allowed by 32 call levels and the
/// default expression depths was measured to need in a debug build (8 MiB).
pub const MIN_STACK_SIZE: usize = 16 * 1024 * 1024;
/// The largest stack a script thread gets (address space, mostly untouched).
pub const MAX_STACK_SIZE: usize = 1024 * 1024 * 1024;

/// Limits of the script sandbox. Every field has a safe default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxLimits {
    /// Rhai operations per run (each statement, expression and call counts).
    pub max_operations: u64,
    /// Depth of script function calls; at most 32.
    pub max_call_levels: usize,
    /// Nesting depth of expressions at the top level of a script; at most 64.
    pub max_expr_depth: usize,
    /// Nesting depth of expressions inside functions; at most 32.
    pub max_function_expr_depth: usize,
    /// Bytes in one string.
    pub max_string_size: usize,
    /// Items in one array (nested arrays included) or bytes in one BLOB.
    pub max_array_size: usize,
    /// Properties in one object map (nested maps included).
    pub max_map_size: usize,
    /// Modules one run may import.
    pub max_modules: usize,
    /// Variables alive at one time.
    pub max_variables: usize,
    /// Nesting depth of a value given to a host function or returned by a script.
    pub max_value_depth: usize,
    /// Bytes in one object map key (keys also count towards `max_string_size`).
    #[serde(deserialize_with = "deserialize_bytes")]
    #[schemars(schema_with = "bytes_schema")]
    pub max_key_size: usize,
    /// Bytes one run may hold at once: its values, what native functions and
    /// callbacks build, effect answers and records. Each condition and the
    /// scripts folder's top-level code at load get the same budget.
    #[serde(deserialize_with = "deserialize_bytes")]
    #[schemars(schema_with = "bytes_schema")]
    pub max_memory: usize,
    /// Log lines one run keeps; later lines are dropped and a last line says how many.
    pub max_log_lines: usize,
    /// Bytes of log text one run keeps, likewise.
    #[serde(deserialize_with = "deserialize_bytes")]
    #[schemars(schema_with = "bytes_schema")]
    pub max_log_bytes: usize,
    /// Effect calls one run may make (`now()` and `state::` included); the
    /// next one fails the run.
    pub max_effects: usize,
    /// Wall-clock time one `when:` or `key:` expression may take.
    #[serde(deserialize_with = "deserialize_duration")]
    #[schemars(schema_with = "duration_schema")]
    pub condition_timeout: Duration,
    /// Wall-clock time for evaluating the scripts folder's top-level code at
    /// load, all modules together.
    #[serde(deserialize_with = "deserialize_duration")]
    #[schemars(schema_with = "duration_schema")]
    pub load_timeout: Duration,
    /// Native stack of each script thread, in bytes (or "64MiB").
    #[serde(deserialize_with = "deserialize_bytes")]
    #[schemars(schema_with = "bytes_schema")]
    pub stack_size: usize,
    /// Script threads.
    pub pool_threads: usize,
}

impl Default for SandboxLimits {
    fn default() -> SandboxLimits {
        SandboxLimits {
            max_operations: 5_000_000,
            max_call_levels: MAX_CALL_LEVELS_CAP,
            max_expr_depth: 64,
            max_function_expr_depth: 32,
            max_string_size: 1024 * 1024,
            max_array_size: 50_000,
            max_map_size: 50_000,
            max_modules: 32,
            max_variables: 1_000,
            max_value_depth: 64,
            max_key_size: 1024,
            max_memory: 64 * 1024 * 1024,
            max_log_lines: OutputLimits::default().max_log_lines,
            max_log_bytes: OutputLimits::default().max_log_bytes,
            max_effects: OutputLimits::default().max_effects,
            condition_timeout: Duration::from_millis(50),
            load_timeout: Duration::from_secs(5),
            stack_size: 64 * 1024 * 1024,
            pool_threads: default_pool_threads(),
        }
    }
}

impl SandboxLimits {
    /// The limits the engine applies: zeros become the default (Rhai reads 0
    /// as unlimited), the call depth is capped at 32 and the expression
    /// depths at 64 and 32 (they bound native stack use), the stack size is
    /// kept between 16 MiB and 1 GiB, and at least one thread runs scripts.
    pub fn effective(&self) -> SandboxLimits {
        let default = SandboxLimits::default();
        SandboxLimits {
            max_operations: nonzero(self.max_operations, default.max_operations),
            max_call_levels: nonzero(self.max_call_levels, default.max_call_levels)
                .min(MAX_CALL_LEVELS_CAP),
            max_expr_depth: nonzero(self.max_expr_depth, default.max_expr_depth)
                .min(MAX_EXPR_DEPTH_CAP),
            max_function_expr_depth: nonzero(
                self.max_function_expr_depth,
                default.max_function_expr_depth,
            )
            .min(MAX_FUNCTION_EXPR_DEPTH_CAP),
            max_string_size: nonzero(self.max_string_size, default.max_string_size),
            max_array_size: nonzero(self.max_array_size, default.max_array_size),
            max_map_size: nonzero(self.max_map_size, default.max_map_size),
            max_modules: nonzero(self.max_modules, default.max_modules),
            max_variables: nonzero(self.max_variables, default.max_variables),
            max_value_depth: nonzero(self.max_value_depth, default.max_value_depth),
            max_key_size: nonzero(self.max_key_size, default.max_key_size),
            max_memory: nonzero(self.max_memory, default.max_memory),
            max_log_lines: nonzero(self.max_log_lines, default.max_log_lines),
            max_log_bytes: nonzero(self.max_log_bytes, default.max_log_bytes),
            max_effects: nonzero(self.max_effects, default.max_effects),
            condition_timeout: nonzero_duration(self.condition_timeout, default.condition_timeout),
            load_timeout: nonzero_duration(self.load_timeout, default.load_timeout),
            stack_size: nonzero(self.stack_size, default.stack_size)
                .clamp(MIN_STACK_SIZE, MAX_STACK_SIZE),
            pool_threads: nonzero(self.pool_threads, default.pool_threads),
        }
    }
}

impl SandboxLimits {
    /// What one run may log and how many effects it may make.
    pub fn output_limits(&self) -> OutputLimits {
        OutputLimits {
            max_log_lines: self.max_log_lines,
            max_log_bytes: self.max_log_bytes,
            max_effects: self.max_effects,
        }
    }
}

/// Script threads spend most of a run waiting (an effect's HTTP call, its
/// record's commit to the journal), not computing, so there are several per
/// core: with two per core, a burst of runs queues behind a few commits.
fn default_pool_threads() -> usize {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    (cores * 16).clamp(16, 64)
}

fn nonzero<T: PartialEq + Default>(value: T, default: T) -> T {
    if value == T::default() {
        default
    } else {
        value
    }
}

fn nonzero_duration(value: Duration, default: Duration) -> Duration {
    if value.is_zero() { default } else { value }
}

/// What `deserialize_duration` reads, for the settings' JSON Schema.
fn duration_schema(_generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": ["integer", "string"],
        "description": "seconds, or a duration such as 50ms, 2s or 5m"
    })
}

/// What `deserialize_bytes` reads, for the settings' JSON Schema.
fn bytes_schema(_generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": ["integer", "string"],
        "description": "bytes, or a size such as 512KiB or 64MiB"
    })
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Number(u64),
    Text(String),
}

fn deserialize_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    match NumberOrText::deserialize(deserializer)? {
        NumberOrText::Number(seconds) => Ok(Duration::from_secs(seconds)),
        NumberOrText::Text(text) => parse_seconds_or_duration(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid duration `{text}`, expected a number with a unit such as 50ms, 2s or 5m"
            ))
        }),
    }
}

fn deserialize_bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    let invalid = |text: &str| {
        serde::de::Error::custom(format!(
            "invalid size `{text}`, expected bytes or a size such as 512KiB or 64MiB"
        ))
    };
    match NumberOrText::deserialize(deserializer)? {
        NumberOrText::Number(bytes) => usize::try_from(bytes).map_err(|_| invalid("too large")),
        NumberOrText::Text(text) => parse_bytes(&text).ok_or_else(|| invalid(&text)),
    }
}

fn parse_bytes(text: &str) -> Option<usize> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number.parse().ok()?;
    let multiplier = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1024,
        "MiB" | "M" | "MB" => 1024 * 1024,
        "GiB" | "G" | "GB" => 1024 * 1024 * 1024,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_become_safe_defaults_and_call_depth_is_capped() {
        let zeros = SandboxLimits {
            max_operations: 0,
            max_call_levels: 1000,
            max_expr_depth: 0,
            max_function_expr_depth: 10_000,
            max_string_size: 0,
            max_array_size: 0,
            max_map_size: 0,
            max_modules: 0,
            max_variables: 0,
            max_value_depth: 0,
            max_key_size: 0,
            max_memory: 0,
            max_log_lines: 0,
            max_log_bytes: 0,
            max_effects: 0,
            condition_timeout: Duration::ZERO,
            load_timeout: Duration::ZERO,
            stack_size: 1,
            pool_threads: 0,
        };
        let effective = zeros.effective();
        let default = SandboxLimits::default();
        assert_eq!(effective.max_operations, default.max_operations);
        assert_eq!(effective.max_call_levels, 32);
        assert_eq!(effective.max_expr_depth, default.max_expr_depth);
        assert_eq!(
            effective.max_function_expr_depth,
            MAX_FUNCTION_EXPR_DEPTH_CAP
        );
        assert_eq!(effective.max_string_size, default.max_string_size);
        assert_eq!(effective.max_array_size, default.max_array_size);
        assert_eq!(effective.max_map_size, default.max_map_size);
        assert_eq!(effective.max_modules, default.max_modules);
        assert_eq!(effective.max_variables, default.max_variables);
        assert_eq!(effective.max_value_depth, default.max_value_depth);
        assert_eq!(effective.max_memory, default.max_memory);
        assert_eq!(effective.max_key_size, default.max_key_size);
        assert_eq!(effective.output_limits(), OutputLimits::default());
        assert_eq!(effective.condition_timeout, Duration::from_millis(50));
        assert_eq!(effective.stack_size, MIN_STACK_SIZE);
        assert!(effective.pool_threads >= 1);
    }

    #[test]
    fn defaults_are_their_own_effective_values() {
        let default = SandboxLimits::default();
        assert_eq!(default.effective(), default);
        assert!(default.max_call_levels <= MAX_CALL_LEVELS_CAP);
    }

    #[test]
    fn reads_durations_and_sizes_and_refuses_unknown_keys() {
        let limits: SandboxLimits = serde_json::from_str(
            r#"{"condition_timeout": "20ms", "load_timeout": 3, "stack_size": "32MiB", "max_operations": 10, "max_memory": "16MiB", "max_log_bytes": 4096}"#,
        )
        .unwrap();
        assert_eq!(limits.condition_timeout, Duration::from_millis(20));
        assert_eq!(limits.load_timeout, Duration::from_secs(3));
        assert_eq!(limits.stack_size, 32 * 1024 * 1024);
        assert_eq!(limits.max_operations, 10);
        assert_eq!(limits.max_memory, 16 * 1024 * 1024);
        assert_eq!(limits.max_log_bytes, 4096);
        assert_eq!(limits.max_map_size, SandboxLimits::default().max_map_size);

        let unknown = serde_json::from_str::<SandboxLimits>(r#"{"max_ops": 1}"#).unwrap_err();
        assert!(unknown.to_string().contains("max_ops"), "{unknown}");
        let bad =
            serde_json::from_str::<SandboxLimits>(r#"{"condition_timeout": "soon"}"#).unwrap_err();
        assert!(bad.to_string().contains("invalid duration `soon`"), "{bad}");
    }
}
