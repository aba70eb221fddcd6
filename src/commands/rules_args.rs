//! What every rule-reading command shares: where rules and scripts are, the
//! sandbox limits of the configuration, and loading the rules with every
//! error printed as `path:line:col: message`.

use std::path::PathBuf;
use std::sync::Arc;

use super::CommandError;
use zoomwire_engine::config::{LoadOptions, Settings};
use zoomwire_engine::rules::compile::load_rule_set;
use zoomwire_engine::rules::{RuleError, RuleSet, RuleSources};
use zoomwire_engine::script::{SandboxLimits, ScriptPool};

/// Rule files or folders, and the scripts folder.
#[derive(Debug, Clone)]
pub struct RuleArgs {
    /// Rule files or folders; empty means `$ZOOMWIRE_RULES` or `rules`.
    pub paths: Vec<PathBuf>,
    /// Folder of Rhai modules that rules import.
    pub scripts: PathBuf,
}

impl RuleArgs {
    pub fn sources(&self) -> RuleSources {
        let paths = if self.paths.is_empty() {
            vec![
                std::env::var_os("ZOOMWIRE_RULES")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("rules")),
            ]
        } else {
            self.paths.clone()
        };
        RuleSources {
            paths,
            scripts_dir: self.scripts.clone(),
        }
    }
}

/// The sandbox limits the configuration sets (`sandbox:` in `zoomwire.yaml`),
/// so that `check`, `test`, `fire` and `replay` hold scripts to the limits
/// the daemon uses; the defaults where it sets none.
pub fn configured_limits() -> Result<SandboxLimits, CommandError> {
    let settings = Settings::load(&LoadOptions::from_process_env())
        .map_err(|errors| CommandError::Usage(errors.to_string()))?;
    if settings.sandbox.is_null() {
        return Ok(SandboxLimits::default());
    }
    serde_json::from_value(settings.sandbox)
        .map_err(|error| CommandError::Usage(format!("`sandbox`: {error}")))
}

/// Loads the rule set, or prints every error and returns them.
pub fn load_rules(args: &RuleArgs, limits: &SandboxLimits) -> Result<Arc<RuleSet>, Vec<RuleError>> {
    load_rule_set(&args.sources(), limits).map(Arc::new)
}

/// Prints load errors to stderr, one per line, and a count.
pub fn print_rule_errors(errors: &[RuleError]) {
    for error in errors {
        eprintln!("{error}");
    }
    eprintln!(
        "{} error{} found",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
}

/// The script pool the sandbox limits ask for.
pub fn script_pool(limits: &SandboxLimits) -> Arc<ScriptPool> {
    Arc::new(ScriptPool::new(limits.pool_threads, limits.stack_size))
}
