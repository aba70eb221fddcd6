//! Rule files become a compiled, immutable [`RuleSet`]: YAML parsed, every
//! key checked, every Rhai script compiled to an AST, and an index from event
//! type to rules built. Loading compiles; running never parses.
//!
//! `spec.rs` holds what the file says, `load.rs` reads files and checks keys,
//! `compile.rs` builds [`Rule`]s, `index.rs` finds the rules for an event type.
//! `lint.rs` holds the checks `zoomwire check` adds to loading (event types
//! that are not Zoom's, host functions called without their capability, found
//! in the compiled AST by `host_calls.rs`).

pub mod compile;
pub mod fast;
pub mod host_calls;
pub mod index;
pub mod lint;
pub mod load;
pub mod spec;
pub mod yaml;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rhai::AST;

use crate::effects::CapabilitySet;
use crate::schedule::CronSchedule;
use crate::script::Sandbox;
pub use index::{EventPattern, TypeIndex};
pub use spec::Mode;
pub use yaml::Position;

/// One problem in a rule file, reported as `path:line:col: rule "name": message`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct RuleError {
    pub path: PathBuf,
    pub position: Position,
    pub rule: Option<String>,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: ",
            self.path.display(),
            self.position.line,
            self.position.column
        )?;
        if let Some(rule) = &self.rule {
            write!(f, "rule \"{rule}\": ")?;
        }
        f.write_str(&self.message)
    }
}

/// Where a script's text starts, so that Rhai positions point into the file.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptOrigin {
    pub path: PathBuf,
    /// Position of the script's first character.
    pub start: Position,
}

impl ScriptOrigin {
    /// Maps a 1-based position inside the script to a position in the file.
    /// Continuation lines of a block scalar share the first line's indentation.
    pub fn locate(&self, line: usize, column: usize) -> Position {
        let line = line.max(1);
        let column = column.max(1);
        Position {
            line: self.start.line + line - 1,
            column: self.start.column + column - 1,
        }
    }
}

/// A compiled script or expression with where it came from.
#[derive(Debug, Clone)]
pub struct CompiledScript {
    pub ast: Arc<AST>,
    pub origin: ScriptOrigin,
    /// What of the event a script reads (all of it for an expression).
    pub event_paths: Arc<crate::script::event_paths::EventPaths>,
    /// Where the calls of effects a script need not wait for, ending it,
    /// are (none for an expression); see [`crate::script::last_effect`].
    pub last_effects: crate::script::last_effect::LastEffects,
}

/// What makes a rule fire.
#[derive(Debug, Clone)]
pub enum Trigger {
    Events(Vec<EventPattern>),
    Schedule(Box<CronSchedule>),
}

/// When a failed run is tried again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts, the first included (1: no retry).
    pub attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    pub const NONE: RetryPolicy = RetryPolicy {
        attempts: 1,
        backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(300),
    };

    /// The wait before attempt `next_attempt` (2 for the first retry):
    /// exponential, capped, with full jitter over the upper half.
    pub fn delay_before(&self, next_attempt: u32) -> Duration {
        let backoff = crate::backoff::Backoff {
            first: self.backoff,
            max: self.max_backoff,
            jitter: crate::backoff::Jitter::Equal,
        };
        backoff.delay(next_attempt.saturating_sub(2))
    }
}

/// A test written under a rule's `tests:`.
#[derive(Debug, Clone)]
pub struct RuleTest {
    pub spec: spec::TestSpec,
    /// The rule file's folder: event paths are relative to it.
    pub base_dir: PathBuf,
    pub position: Position,
}

/// A rule, compiled.
#[derive(Debug)]
pub struct Rule {
    pub name: Arc<str>,
    pub description: Option<String>,
    pub path: PathBuf,
    pub position: Position,
    pub trigger: Trigger,
    /// Where the trigger (`on:` or `schedule:`) is written.
    pub trigger_position: Position,
    pub condition: Option<CompiledScript>,
    /// The condition evaluated natively when it is simple enough (most
    /// are); Rhai evaluates it whenever this is absent or unsure.
    pub fast_condition: Option<fast::FastCondition>,
    pub key: Option<CompiledScript>,
    pub action: CompiledScript,
    /// Script files this rule's action loads (its `do: {script}` file).
    pub script_file: Option<PathBuf>,
    pub capabilities: CapabilitySet,
    /// Effects the rule says may be performed again after a crash left them
    /// in doubt (`idempotent:`), besides those that always may be.
    pub idempotent: Vec<String>,
    /// The Zoom account the rule's Zoom calls use (`account:`), when it names one.
    pub account: Option<Arc<str>>,
    pub mode: Mode,
    /// Runs at once per key (`parallel`).
    pub max_runs: u32,
    /// Waiting runs per key beyond which new ones are dropped (`parallel`,
    /// `queued`); none: every run waits its turn.
    pub max_queued: Option<u32>,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub enabled: bool,
    pub tests: Vec<RuleTest>,
}

impl Rule {
    /// Whether an effect left in doubt by a crash may be performed again:
    /// it always may be (a read, rule state, a download) or the rule says so.
    pub fn may_repeat(&self, effect: &str) -> bool {
        crate::effects::is_repeatable(effect) || self.idempotent.iter().any(|e| e == effect)
    }

    /// The cron schedule, for scheduled rules.
    pub fn schedule(&self) -> Option<&CronSchedule> {
        match &self.trigger {
            Trigger::Schedule(schedule) => Some(schedule),
            Trigger::Events(_) => None,
        }
    }

    /// Whether the rule listens for events of this type (ignores `enabled`).
    pub fn listens_to(&self, event_type: &str) -> bool {
        match &self.trigger {
            Trigger::Events(patterns) => patterns.iter().any(|p| p.matches(event_type)),
            Trigger::Schedule(_) => event_type == "schedule",
        }
    }
}

/// Where rules and scripts are loaded from.
#[derive(Debug, Clone)]
pub struct RuleSources {
    /// Rule files or folders (searched recursively for `*.yaml` and `*.yml`).
    pub paths: Vec<PathBuf>,
    pub scripts_dir: PathBuf,
}

/// An immutable, compiled snapshot of every rule. Runs keep the snapshot they started with.
pub struct RuleSet {
    rules: Vec<Arc<Rule>>,
    index: TypeIndex,
    sandbox: Arc<Sandbox>,
    files: Vec<PathBuf>,
}

impl fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleSet")
            .field("rules", &self.rules.len())
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl RuleSet {
    pub fn new(rules: Vec<Arc<Rule>>, sandbox: Arc<Sandbox>, files: Vec<PathBuf>) -> RuleSet {
        let index = TypeIndex::build(&rules);
        RuleSet {
            rules,
            index,
            sandbox,
            files,
        }
    }

    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    pub fn rule(&self, name: &str) -> Option<&Arc<Rule>> {
        self.rules.iter().find(|r| &*r.name == name)
    }

    pub fn index(&self) -> &TypeIndex {
        &self.index
    }

    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    /// The rule files this set was loaded from.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Keeps only the named rule (for rule tests).
    pub fn only(&self, name: &str) -> RuleSet {
        let rules = self
            .rules
            .iter()
            .filter(|r| &*r.name == name)
            .cloned()
            .collect();
        RuleSet::new(rules, self.sandbox.clone(), self.files.clone())
    }
}

/// The file stem of a rule file, the default rule name.
pub(crate) fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_path_line_col_rule_message() {
        let error = RuleError {
            path: PathBuf::from("rules/a.yaml"),
            position: Position { line: 3, column: 7 },
            rule: Some("a".into()),
            message: "unknown key `whne`".into(),
        };
        assert_eq!(
            error.to_string(),
            "rules/a.yaml:3:7: rule \"a\": unknown key `whne`"
        );
    }

    #[test]
    fn script_positions_are_offset_into_the_file() {
        let origin = ScriptOrigin {
            path: PathBuf::from("a.yaml"),
            start: Position { line: 5, column: 3 },
        };
        assert_eq!(origin.locate(1, 1), Position { line: 5, column: 3 });
        assert_eq!(
            origin.locate(2, 10),
            Position {
                line: 6,
                column: 12
            }
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy {
            attempts: 10,
            backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(10),
        };
        for _ in 0..50 {
            let first = policy.delay_before(2);
            assert!(first >= Duration::from_secs(1) && first <= Duration::from_secs(2));
            let third = policy.delay_before(4);
            assert!(third >= Duration::from_secs(4) && third <= Duration::from_secs(8));
            assert!(policy.delay_before(30) <= Duration::from_secs(10));
        }
    }
}
