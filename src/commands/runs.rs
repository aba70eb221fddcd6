//! `zoomwire runs [--rule NAME] [--failed|--skipped] [--json]`: run history from the
//! store, as a table or JSON lines; `zoomwire runs show ID [--json]`: one run
//! with its effects (replayed, in doubt) and log lines; `zoomwire runs retry
//! ID`: a failed or dead run queued again.
//!
//! All read the store the daemon's settings name: the SQLite file under
//! the data folder, opened beside a running daemon (WAL allows it) without
//! pruning or a full check and never created where there is none (`--data`,
//! else the configured data folder: `ZOOMWIRE_DATA`, `.env`, `zoomwire.yaml`,
//! else `.zoomwire`); or, with `ZOOMWIRE_JOURNAL=postgres`, the shared
//! PostgreSQL journal.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::anyhow;

use super::{CommandError, CommandResult, load_settings};
use zoomwire_engine::config::LoadOptions;
use zoomwire_engine::engine::journal::JournalError;
use zoomwire_engine::journal::JournalMode;
use zoomwire_engine::journal::postgres::{PostgresJournal, PostgresOptions};
use zoomwire_engine::journal::{
    DB_FILE, JournalOptions, RequeueOutcome, RunDetail, RunFilter, RunSummary, SqliteJournal,
};

/// Most runs listed.
pub const LIST_LIMIT: usize = 200;

/// Longest error shown in a table cell.
const ERROR_WIDTH: usize = 60;

/// The store's folder: `flag` (`--data`), else the configured one.
pub fn data_dir(flag: Option<PathBuf>) -> Result<PathBuf, CommandError> {
    match flag {
        Some(dir) => Ok(dir),
        None => Ok(load_settings(&LoadOptions::from_process_env())?.data_dir),
    }
}

/// Lists runs, newest first: a table, or one JSON object per line.
pub async fn list(
    data_dir: &Path,
    rule: Option<String>,
    failed: bool,
    skipped: bool,
    json: bool,
) -> CommandResult {
    let Some(journal) = open_store(data_dir).await? else {
        eprintln!(
            "no runs yet: there is no store at {}",
            data_dir.join(DB_FILE).display()
        );
        return Ok(ExitCode::SUCCESS);
    };
    let filter = RunFilter {
        rule,
        failed_only: failed,
        skipped_only: skipped,
        limit: LIST_LIMIT,
    };
    let runs = journal
        .list_runs(filter)
        .map_err(|e| CommandError::Other(e.into()))?;
    let text = if json {
        json_lines(&runs)
    } else {
        table(&runs)
    };
    print(&text)?;
    if runs.len() == LIST_LIMIT {
        eprintln!("showing the latest {LIST_LIMIT} runs");
    }
    Ok(ExitCode::SUCCESS)
}

/// Shows one run: its summary, each effect and log line, and its error.
pub async fn show(data_dir: &Path, id: &str, json: bool) -> CommandResult {
    let Some(journal) = open_store(data_dir).await? else {
        return Err(CommandError::Usage(format!(
            "no run `{id}`: there is no store at {}",
            data_dir.join(DB_FILE).display()
        )));
    };
    let no_run = || CommandError::Usage(format!("no run `{id}` in {}", journal.describe()));
    let detail = journal
        .get_run(id)
        .map_err(|e| CommandError::Other(e.into()))?
        .ok_or_else(no_run)?;
    let text = if json {
        format!("{}\n", serde_json::to_string(&detail).unwrap_or_default())
    } else {
        let run = &detail.run;
        format!(
            "run {} of rule {} for event {} ({})\n{}",
            run.id,
            run.rule,
            run.event_id,
            run.event_type,
            zoomwire_engine::terminal::format_run(run)
        )
    };
    print(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// Queues a failed or dead run again, keeping its completed effects for replay.
pub async fn retry(data_dir: &Path, id: &str) -> CommandResult {
    let Some(journal) = open_store(data_dir).await? else {
        return Err(CommandError::Usage(format!(
            "no run `{id}`: there is no store at {}",
            data_dir.join(DB_FILE).display()
        )));
    };
    let outcome = journal
        .requeue_run(id)
        .await
        .map_err(|e| CommandError::Other(e.into()))?;
    let place = journal.describe();
    match outcome {
        RequeueOutcome::Requeued => {
            print(&format!(
                "run {id} is pending again: it runs from its first attempt, replaying the effects that completed\n"
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        RequeueOutcome::NotFound => Err(CommandError::Usage(format!("no run `{id}` in {place}"))),
        RequeueOutcome::NotFinished => Err(CommandError::Other(anyhow!(
            "run `{id}` is not over yet (pending, running or waiting to retry)"
        ))),
        RequeueOutcome::NotFailed(status) => Err(CommandError::Other(anyhow!(
            "run `{id}` is {}: only failed or dead runs can be retried",
            status.as_str()
        ))),
        RequeueOutcome::EventPruned => Err(CommandError::Other(anyhow!(
            "run `{id}` cannot be retried: its event has been pruned from the store"
        ))),
    }
}

/// The store a command reads.
enum Store {
    Sqlite(SqliteJournal),
    Postgres(PostgresJournal),
}

impl Store {
    fn describe(&self) -> String {
        match self {
            Store::Sqlite(journal) => journal.path().display().to_string(),
            Store::Postgres(journal) => format!("postgres {}", journal.server()),
        }
    }

    fn list_runs(&self, filter: RunFilter) -> Result<Vec<RunSummary>, JournalError> {
        match self {
            Store::Sqlite(journal) => journal.list_runs(filter),
            Store::Postgres(journal) => journal.list_runs(filter),
        }
    }

    fn get_run(&self, id: &str) -> Result<Option<RunDetail>, JournalError> {
        match self {
            Store::Sqlite(journal) => journal.get_run(id),
            Store::Postgres(journal) => journal.get_run(id),
        }
    }

    async fn requeue_run(&self, id: &str) -> Result<RequeueOutcome, JournalError> {
        match self {
            Store::Sqlite(journal) => journal.requeue_run(id).await,
            Store::Postgres(journal) => journal.requeue_run(id).await,
        }
    }
}

/// Opens the store the settings name, or `None` when there is no SQLite
/// store yet. Settings that do not load are a usage error, as for `run`.
async fn open_store(data_dir: &Path) -> Result<Option<Store>, CommandError> {
    let settings = load_settings(&LoadOptions::from_process_env())?;
    if settings.journal.store == JournalMode::Postgres
        && let Some(target) = &settings.journal.database
    {
        let options = PostgresOptions {
            node: "zoomwire-runs".into(),
            pool_size: 1,
            limits: settings.journal_options(),
            ..PostgresOptions::default()
        };
        let journal = PostgresJournal::open(target, options)
            .await
            .map_err(|e| CommandError::Other(e.into()))?;
        return Ok(Some(Store::Postgres(journal)));
    }
    if !data_dir.join(DB_FILE).exists() {
        return Ok(None);
    }
    SqliteJournal::open(data_dir, JournalOptions::for_command())
        .map(|journal| Some(Store::Sqlite(journal)))
        .map_err(|e| CommandError::Other(e.into()))
}

fn print(text: &str) -> Result<(), CommandError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        // `zoomwire runs | head` closes the pipe early: not an error.
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(|e| CommandError::Other(e.into())),
    }
}

/// One JSON object per run and line.
pub fn json_lines(runs: &[RunSummary]) -> String {
    runs.iter()
        .map(|run| format!("{}\n", serde_json::to_string(run).unwrap_or_default()))
        .collect()
}

/// The runs as an aligned table with a header.
pub fn table(runs: &[RunSummary]) -> String {
    let header = [
        "ID", "RULE", "STATUS", "ATTEMPT", "EVENT", "CREATED", "ERROR",
    ]
    .map(String::from);
    let rows: Vec<[String; 7]> = runs
        .iter()
        .map(|run| {
            [
                run.id.clone(),
                run.rule.clone(),
                run.status.as_str().to_string(),
                run.attempt.to_string(),
                run.event_type.clone(),
                run.created_at.format("%Y-%m-%d %H:%M:%SZ").to_string(),
                run.error.as_deref().map(one_line).unwrap_or_default(),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    std::iter::once(&header)
        .chain(&rows)
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            format!("{}\n", cells.join("  ").trim_end())
        })
        .collect()
}

/// The first line of an error, cut to the table's width.
fn one_line(error: &str) -> String {
    let line = error.lines().next().unwrap_or_default();
    if line.chars().count() <= ERROR_WIDTH && !error.contains('\n') {
        return line.to_string();
    }
    let cut: String = line.chars().take(ERROR_WIDTH - 1).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use zoomwire_engine::engine::journal::RunStatus;

    fn summary(id: &str, status: RunStatus, error: Option<&str>) -> RunSummary {
        RunSummary {
            id: id.into(),
            rule: "recording-to-slack".into(),
            status,
            attempt: 3,
            event_id: "e".into(),
            event_type: "recording.completed".into(),
            key: None,
            error: error.map(String::from),
            created_at: Utc.with_ymd_and_hms(2026, 11, 27, 9, 30, 0).unwrap(),
            started_at: None,
            finished_at: None,
        }
    }

    #[test]
    fn the_table_aligns_columns_and_keeps_errors_on_one_line() {
        let long = format!("slack.post: 503 {}\nsecond line", "x".repeat(80));
        let text = table(&[
            summary("run-1", RunStatus::Dead, Some(&long)),
            summary("run-22", RunStatus::Succeeded, None),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ID      RULE"), "{text}");
        assert!(
            lines[1].contains("dead       3        recording.completed  2026-11-27 09:30:00Z"),
            "{text}"
        );
        assert!(lines[1].ends_with('…'), "{text}");
        assert!(!text.contains("second line"));
        assert!(lines[2].ends_with("09:30:00Z"), "{text}");
    }

    #[test]
    fn json_lines_hold_one_run_each() {
        let text = json_lines(&[summary("a", RunStatus::Failed, Some("boom"))]);
        let value: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(value["status"], "failed");
        assert_eq!(value["error"], "boom");
    }
}
