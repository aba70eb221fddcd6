//! How `zoomwire demo` writes to the terminal: one line per event in story
//! time, each finished run as `fire` prints it, then what the simulator and
//! the mail sink saw because of it, and a summary at the end.

use std::collections::BTreeMap;
use std::fmt::Write;

use chrono::{DateTime, Utc};

use crate::sim::{ReceivedMail, RecordedRequest, SlackPost};
use zoomwire_engine::engine::journal::RunRecord;
use zoomwire_engine::terminal::format_run;

/// The account's time zone, in which the story's times are shown.
const ACCOUNT_ZONE: chrono_tz::Tz = chrono_tz::Europe::Berlin;

/// `Mon 18 Nov 14:00` in the account's zone.
pub fn local_time(at: DateTime<Utc>) -> String {
    at.with_timezone(&ACCOUNT_ZONE)
        .format("%a %d %b %H:%M")
        .to_string()
}

/// The line announcing one event; `note` says why nothing fired, if so.
pub fn event_line(at: DateTime<Utc>, event_type: &str, caption: &str, note: &str) -> String {
    let note = if note.is_empty() {
        String::new()
    } else {
        format!("   ({note})")
    };
    format!("{}  {event_type:<27} {caption}{note}", local_time(at))
}

/// A finished run, indented under its event.
pub fn run_lines(run: &RunRecord) -> String {
    indent(&format_run(run), "    ")
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines().fold(String::new(), |mut out, line| {
        let _ = writeln!(out, "{prefix}{line}");
        out
    })
}

/// What the simulator served because of the runs: REST calls and Slack posts.
pub fn simulator_lines(requests: &[RecordedRequest], posts: &[SlackPost]) -> String {
    let mut out = String::new();
    for request in requests.iter().filter(|r| !is_slack(r)) {
        let query = request
            .query
            .as_deref()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "      ↳ simulator served {} {}{query} ({})",
            request.method, request.raw_path, request.status
        );
    }
    for post in posts {
        let channel = post.channel.as_deref().unwrap_or(&post.via);
        let text = post.text.as_deref().unwrap_or("(blocks)");
        let first_line = text.lines().next().unwrap_or_default();
        let more = if text.lines().count() > 1 { " …" } else { "" };
        let _ = writeln!(out, "      ↳ Slack {channel} got: {first_line}{more}");
    }
    out
}

/// What the mail sink received because of the runs.
pub fn mail_lines(mails: &[ReceivedMail]) -> String {
    mails.iter().fold(String::new(), |mut out, mail| {
        let _ = writeln!(
            out,
            "      ↳ mail sink got \"{}\" for {}",
            mail.subject().unwrap_or_default(),
            mail.to.join(", ")
        );
        out
    })
}

fn is_slack(request: &RecordedRequest) -> bool {
    request.raw_path.starts_with("/slack/")
}

/// Whether a request is a Zoom REST call (not OAuth, the WebSocket, Slack).
pub fn is_rest(request: &RecordedRequest) -> bool {
    request.raw_path.starts_with("/v2/")
}

/// What the summary counts.
#[derive(Debug, Default)]
pub struct Tally {
    pub events_sent: usize,
    pub schedule_firings: usize,
    /// Runs by outcome (`succeeded`, `failed`, ...).
    pub runs_by_outcome: BTreeMap<String, usize>,
    /// Runs by rule.
    pub runs_by_rule: BTreeMap<String, usize>,
    /// Runs the demo expected but did not see finish in time.
    pub runs_missing: usize,
}

impl Tally {
    pub fn count_run(&mut self, run: &RunRecord) {
        *self
            .runs_by_outcome
            .entry(run.status.as_str().to_string())
            .or_default() += 1;
        *self.runs_by_rule.entry(run.rule.clone()).or_default() += 1;
    }

    /// Whether every run ran and succeeded.
    pub fn all_succeeded(&self) -> bool {
        self.runs_missing == 0
            && self
                .runs_by_outcome
                .keys()
                .all(|outcome| outcome == "succeeded")
    }
}

/// The closing summary.
pub fn summary(
    tally: &Tally,
    requests: &[RecordedRequest],
    posts: &[SlackPost],
    mails: &[ReceivedMail],
) -> String {
    let mut out = String::from("\nSummary\n");
    let _ = writeln!(
        out,
        "  events sent:       {} over the simulator's WebSocket, plus {} schedule firing{}",
        tally.events_sent,
        tally.schedule_firings,
        plural(tally.schedule_firings)
    );
    let total: usize = tally.runs_by_outcome.values().sum();
    let _ = writeln!(
        out,
        "  runs:              {total} ({}){}",
        join_counts(&tally.runs_by_outcome),
        if tally.runs_missing > 0 {
            format!(", {} expected but not finished", tally.runs_missing)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "  runs by rule:      {}",
        join_counts(&tally.runs_by_rule)
    );
    let by_channel = count_by(
        posts
            .iter()
            .map(|p| p.channel.clone().unwrap_or_else(|| p.via.clone())),
    );
    let _ = writeln!(
        out,
        "  slack posts:       {} received by the simulator ({})",
        posts.len(),
        join_counts(&by_channel)
    );
    let rest: Vec<&RecordedRequest> = requests.iter().filter(|r| is_rest(r)).collect();
    let by_endpoint = count_by(
        rest.iter()
            .map(|r| format!("{} {}", r.method, endpoint(&r.raw_path))),
    );
    let _ = writeln!(
        out,
        "  zoom rest calls:   {} served by the simulator ({})",
        rest.len(),
        join_counts(&by_endpoint)
    );
    let by_recipient = count_by(mails.iter().flat_map(|m| m.to.clone()));
    let _ = writeln!(
        out,
        "  emails received:   {} by the mail sink ({})",
        mails.len(),
        join_counts(&by_recipient)
    );
    out
}

/// A REST path with its ids replaced by placeholders: `/v2/users/{id}`.
fn endpoint(raw_path: &str) -> String {
    let segments: Vec<&str> = raw_path.split('/').collect();
    segments
        .iter()
        .enumerate()
        .map(|(i, segment)| {
            let previous = if i > 0 { segments[i - 1] } else { "" };
            match previous {
                "users" if *segment != "me" => "{userId}",
                "past_meetings" => "{uuid}",
                "meetings" => "{meetingId}",
                _ => segment,
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn count_by(items: impl Iterator<Item = String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for item in items {
        *counts.entry(item).or_default() += 1;
    }
    counts
}

fn join_counts(counts: &BTreeMap<String, usize>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(name, count)| format!("{name} {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn times_are_shown_in_the_account_zone() {
        let at = Utc.with_ymd_and_hms(2024, 11, 18, 13, 0, 0).unwrap();
        assert_eq!(local_time(at), "Mon 18 Nov 14:00");
    }

    #[test]
    fn endpoints_hide_their_ids() {
        assert_eq!(
            endpoint("/v2/users/hU7x2QeLSmOa3kP9rT1bYw"),
            "/v2/users/{userId}"
        );
        assert_eq!(
            endpoint("/v2/users/me/recordings"),
            "/v2/users/me/recordings"
        );
        assert_eq!(
            endpoint("/v2/past_meetings/%252Fab%253D%253D/participants"),
            "/v2/past_meetings/{uuid}/participants"
        );
    }
}
