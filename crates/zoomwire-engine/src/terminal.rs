//! How runs are shown on a terminal by `fire`, `replay` and `demo`.

use std::fmt::Write;

use crate::effects::gateway::EffectRecord;
use crate::engine::journal::{RunRecord, RunStatus};

/// A run, its effects and logs, as a few indented lines.
pub fn format_run(run: &RunRecord) -> String {
    let mut text = String::new();
    let elapsed = match (run.started_at, run.finished_at) {
        (Some(start), Some(end)) => format!(" in {}ms", (end - start).num_milliseconds()),
        _ => String::new(),
    };
    let key = run
        .key
        .as_deref()
        .map(|k| format!(" [key {k}]"))
        .unwrap_or_default();
    let attempts = if run.attempt > 1 {
        format!(" after {} attempts", run.attempt)
    } else {
        String::new()
    };
    let _ = writeln!(
        text,
        "{} {}{key}: {}{elapsed}{attempts}",
        status_mark(run.status),
        run.rule,
        run.status.as_str()
    );
    for effect in &run.effects {
        let _ = writeln!(text, "    {}", format_effect(effect));
    }
    for log in &run.logs {
        let _ = writeln!(text, "    log {}: {}", log.level, log.message);
    }
    if let Some(error) = &run.error {
        let _ = writeln!(text, "    error: {error}");
    }
    if let Some(output) = &run.output {
        let _ = writeln!(text, "    => {output}");
    }
    text
}

/// One effect call: `2. slack.post {"channel":"#x"} -> ok`.
pub fn format_effect(effect: &EffectRecord) -> String {
    let result = match &effect.result {
        Ok(value) if value.is_null() => "ok".to_string(),
        Ok(value) => format!("ok {}", truncate(&value.to_string(), 160)),
        Err(error) => format!("error {error}"),
    };
    let replayed = if effect.replayed { " (replayed)" } else { "" };
    let in_doubt = if effect.in_doubt { " (in doubt)" } else { "" };
    format!(
        "{}. {} {} -> {result}{replayed}{in_doubt}",
        effect.seq,
        effect.name,
        truncate(&effect.args.to_string(), 200)
    )
}

fn status_mark(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Succeeded => "✓",
        RunStatus::Skipped => "-",
        RunStatus::Pending | RunStatus::Running => "…",
        RunStatus::Failed | RunStatus::Dead => "✗",
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let cut: String = text.chars().take(max).collect();
    format!("{cut}…")
}
