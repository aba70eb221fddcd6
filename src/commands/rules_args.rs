//! What every rule-reading command shares: the settings, read the way
//! `zoomwire run` reads them (`zoomwire.yaml` < `.env` < the environment),
//! with the command line's `--rules`/`--scripts` on top; loading the rules
//! under the configured sandbox limits, with every error printed as
//! `path:line:col: message`; and the configured `vars` scripts see. So a rule
//! that passes `zoomwire test` meets the same limits and `vars` in the daemon.

use std::path::PathBuf;
use std::sync::Arc;

use super::{CommandError, load_settings};
use crate::config::{LoadOptions, Settings};
use crate::rules::compile::load_rule_set;
use crate::rules::{RuleError, RuleSet, RuleSources};
use crate::script::{SandboxLimits, ScriptPool, vars_value};

/// `--rules PATH` (repeatable) and `--scripts DIR`, the flags of every
/// command that reads rules; unset, the configured folders.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RuleLocation {
    /// Rule file or folder (repeatable) [default: the configured rules folder]
    #[arg(long = "rules", value_name = "PATH")]
    pub rules: Vec<PathBuf>,
    /// Folder of Rhai modules that rules import [default: the configured scripts folder]
    #[arg(long, value_name = "DIR")]
    pub scripts: Option<PathBuf>,
}

impl RuleLocation {
    /// The rule paths given as arguments (`check`'s and `test`'s), then these.
    pub fn into_args(self, mut paths: Vec<PathBuf>) -> RuleArgs {
        paths.extend(self.rules);
        RuleArgs {
            paths,
            scripts: self.scripts,
        }
    }
}

/// Rule files or folders, and the scripts folder, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct RuleArgs {
    /// Rule files or folders; empty means the configured rules folder.
    pub paths: Vec<PathBuf>,
    /// Folder of Rhai modules; `None` means the configured scripts folder.
    pub scripts: Option<PathBuf>,
}

/// The settings a rule-reading command runs with, and where its rules are.
#[derive(Debug, Clone)]
pub struct CommandSettings {
    pub settings: Settings,
    pub sources: RuleSources,
}

impl RuleArgs {
    /// Reads the settings from the working directory and the process
    /// environment; configuration problems are a usage error (exit 2) that
    /// lists them all.
    pub fn load_settings(&self) -> Result<CommandSettings, CommandError> {
        self.load_settings_with(&LoadOptions::from_process_env())
    }

    /// As [`RuleArgs::load_settings`], from `options`.
    pub fn load_settings_with(
        &self,
        options: &LoadOptions,
    ) -> Result<CommandSettings, CommandError> {
        let settings = load_settings(options)?;
        let sources = self.sources(&settings);
        Ok(CommandSettings { settings, sources })
    }

    /// The command line's folders, else the settings' ones.
    pub fn sources(&self, settings: &Settings) -> RuleSources {
        RuleSources {
            paths: if self.paths.is_empty() {
                vec![settings.rules_dir.clone()]
            } else {
                self.paths.clone()
            },
            scripts_dir: self
                .scripts
                .clone()
                .unwrap_or_else(|| settings.scripts_dir.clone()),
        }
    }
}

impl CommandSettings {
    /// Loads the rule set under the configured sandbox limits.
    pub fn load_rules(&self) -> Result<Arc<RuleSet>, Vec<RuleError>> {
        load_rule_set(&self.sources, &self.settings.sandbox).map(Arc::new)
    }

    /// The script pool the configured limits ask for.
    pub fn script_pool(&self) -> Arc<ScriptPool> {
        script_pool(&self.settings.sandbox)
    }

    /// The configured `vars`, as scripts and conditions see them.
    pub fn vars(&self) -> rhai::Dynamic {
        vars_value(&self.settings.vars)
    }
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
    let limits = limits.effective();
    Arc::new(ScriptPool::new(limits.pool_threads, limits.stack_size))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn options(dir: &std::path::Path, env: &[(&str, &str)]) -> LoadOptions {
        LoadOptions {
            base_dir: dir.to_path_buf(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            ..LoadOptions::default()
        }
    }

    #[test]
    fn folders_come_from_the_command_line_then_the_environment_then_dotenv_then_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("zoomwire.yaml"),
            "rules: from-yaml\nscripts: scripts-yaml\nvars: { channel: \"#ops\" }\nsandbox: { max_operations: 1234 }\n",
        )
        .unwrap();
        let none = RuleArgs::default();
        let loaded = none.load_settings_with(&options(dir.path(), &[])).unwrap();
        assert_eq!(loaded.sources.paths, vec![PathBuf::from("from-yaml")]);
        assert_eq!(loaded.sources.scripts_dir, PathBuf::from("scripts-yaml"));
        assert_eq!(loaded.settings.sandbox.max_operations, 1234);
        let vars = loaded.vars();
        assert_eq!(
            vars.read_lock::<rhai::Map>().unwrap()["channel"].to_string(),
            "#ops"
        );

        std::fs::write(dir.path().join(".env"), "ZOOMWIRE_RULES=from-dotenv\n").unwrap();
        let loaded = none.load_settings_with(&options(dir.path(), &[])).unwrap();
        assert_eq!(loaded.sources.paths, vec![PathBuf::from("from-dotenv")]);
        let loaded = none
            .load_settings_with(&options(dir.path(), &[("ZOOMWIRE_RULES", "from-env")]))
            .unwrap();
        assert_eq!(loaded.sources.paths, vec![PathBuf::from("from-env")]);

        let given = RuleArgs {
            paths: vec![PathBuf::from("a"), PathBuf::from("b.yaml")],
            scripts: Some(PathBuf::from("lib")),
        };
        let loaded = given
            .load_settings_with(&options(dir.path(), &[("ZOOMWIRE_RULES", "from-env")]))
            .unwrap();
        assert_eq!(
            loaded.sources.paths,
            vec![PathBuf::from("a"), PathBuf::from("b.yaml")]
        );
        assert_eq!(loaded.sources.scripts_dir, PathBuf::from("lib"));
    }

    #[test]
    fn configuration_errors_are_a_usage_error_listing_them_all() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("zoomwire.yaml"),
            "sandbox: { max_ops: 1 }\n",
        )
        .unwrap();
        let error = RuleArgs::default()
            .load_settings_with(&options(dir.path(), &[("ZOOMWIRE_WS_HEARTBEAT", "x")]))
            .unwrap_err();
        let CommandError::Usage(message) = error else {
            panic!("a usage error");
        };
        assert!(message.starts_with("invalid configuration:"), "{message}");
        assert!(message.contains("ZOOMWIRE_WS_HEARTBEAT"), "{message}");
        assert!(
            message.contains("sandbox.max_ops: unknown limit"),
            "{message}"
        );
    }
}
