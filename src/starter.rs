//! The starter project, built into the binary: the repository's `rules/`
//! (with their tests), `scripts/` and the sample events those tests read,
//! plus a commented `zoomwire.yaml` and a `.env.example`. `zoomwire init`
//! writes it into a folder; `zoomwire demo` uses its rules and scripts when
//! there is no rules folder, so a binary installed anywhere can show them.
//!
//! The texts are the repository's own files (`include_str!`), so the
//! starter is always the rules the test suite loads and tests.

use std::io::Write;
use std::path::{Path, PathBuf};

/// One file of the starter project: its path inside the project, and its text.
#[derive(Debug, Clone, Copy)]
pub struct StarterFile {
    pub path: &'static str,
    pub text: &'static str,
}

const fn file(path: &'static str, text: &'static str) -> StarterFile {
    StarterFile { path, text }
}

/// The starter rules folder.
pub const RULES_DIR: &str = "rules";
/// The starter scripts folder.
pub const SCRIPTS_DIR: &str = "scripts";

/// The rules, their scripts and the sample events their tests read.
pub const RULE_FILES: &[StarterFile] = &[
    file(
        "rules/meeting-ended-email.yaml",
        include_str!("../rules/meeting-ended-email.yaml"),
    ),
    file(
        "rules/recording-to-slack.yaml",
        include_str!("../rules/recording-to-slack.yaml"),
    ),
    file(
        "rules/weekly-report.yaml",
        include_str!("../rules/weekly-report.yaml"),
    ),
    file(
        "scripts/zoomfmt.rhai",
        include_str!("../scripts/zoomfmt.rhai"),
    ),
    file(
        "examples/events/meeting.started.json",
        include_str!("../examples/events/meeting.started.json"),
    ),
    file(
        "examples/events/meeting.ended.json",
        include_str!("../examples/events/meeting.ended.json"),
    ),
    file(
        "examples/events/meeting.participant_joined.json",
        include_str!("../examples/events/meeting.participant_joined.json"),
    ),
    file(
        "examples/events/recording.completed.json",
        include_str!("../examples/events/recording.completed.json"),
    ),
    file(
        "examples/events/user.created.json",
        include_str!("../examples/events/user.created.json"),
    ),
];

/// The project's settings: commented, with secrets left to `.env`.
pub const SETTINGS_FILES: &[StarterFile] = &[
    file(
        "zoomwire.yaml",
        include_str!("../assets/starter/zoomwire.yaml"),
    ),
    file(
        ".env.example",
        include_str!("../assets/starter/env.example"),
    ),
];

/// Every file `zoomwire init` writes.
pub fn project_files() -> impl Iterator<Item = &'static StarterFile> + Clone {
    SETTINGS_FILES.iter().chain(RULE_FILES)
}

/// Why the starter could not be written.
#[derive(Debug, thiserror::Error)]
pub enum StarterError {
    /// Nothing was written: these files are there already.
    #[error("{} already exist{}: nothing was written", list(.0), if .0.len() == 1 { "s" } else { "" })]
    Exists(Vec<PathBuf>),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes `files` under `dir` (creating folders as needed), refusing to
/// touch any file that exists: when one does, nothing is written.
pub fn write_files<'a>(
    dir: &Path,
    files: impl IntoIterator<Item = &'a StarterFile> + Clone,
) -> Result<Vec<PathBuf>, StarterError> {
    let existing: Vec<PathBuf> = files
        .clone()
        .into_iter()
        .map(|file| dir.join(file.path))
        .filter(|path| path.exists())
        .collect();
    if !existing.is_empty() {
        return Err(StarterError::Exists(existing));
    }
    let mut written = Vec::new();
    for file in files {
        let path = dir.join(file.path);
        write_new(&path, file.text).map_err(|source| StarterError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

/// Creates the file; fails rather than replace one that appeared meanwhile.
fn write_new(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_every_file_and_then_refuses_to_overwrite_any() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_files(dir.path(), project_files()).unwrap();
        assert_eq!(written.len(), project_files().count());
        let rule =
            std::fs::read_to_string(dir.path().join("rules/recording-to-slack.yaml")).unwrap();
        assert_eq!(rule, RULE_FILES[1].text);

        std::fs::write(dir.path().join("rules/recording-to-slack.yaml"), "mine").unwrap();
        std::fs::remove_file(dir.path().join("zoomwire.yaml")).unwrap();
        let error = write_files(dir.path(), project_files()).unwrap_err();
        let StarterError::Exists(existing) = &error else {
            panic!("{error}");
        };
        assert!(existing.len() > 1);
        assert!(
            error
                .to_string()
                .ends_with("already exist: nothing was written")
        );
        assert!(
            !dir.path().join("zoomwire.yaml").exists(),
            "nothing is written when a file exists"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("rules/recording-to-slack.yaml")).unwrap(),
            "mine"
        );
    }

    #[test]
    fn the_starter_holds_every_file_of_the_repositorys_rules_and_scripts() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for folder in [RULES_DIR, SCRIPTS_DIR] {
            for entry in std::fs::read_dir(root.join(folder)).unwrap() {
                let name = entry.unwrap().file_name().to_string_lossy().into_owned();
                let path = format!("{folder}/{name}");
                assert!(
                    RULE_FILES.iter().any(|f| f.path == path),
                    "{path} is missing from the starter"
                );
            }
        }
    }

    #[test]
    fn every_event_file_a_starter_test_names_is_in_the_starter() {
        for rule in RULE_FILES.iter().filter(|f| f.path.starts_with("rules/")) {
            for line in rule.text.lines() {
                if let Some(path) = line.trim().strip_prefix("event: ../") {
                    assert!(
                        RULE_FILES.iter().any(|f| f.path == path),
                        "{} reads {path}",
                        rule.path
                    );
                }
            }
        }
    }
}
