//! `zoomwire reconcile --since TIME [--until TIME] [--dry-run] [--account NAME]`:
//! one reconciliation pass by hand, over a window the operator names: what
//! Zoom's REST API lists there that the store has not seen, for the event
//! types some rule listens to, printed one per line.
//!
//! Without `--dry-run` each one found is fed the way the daemon feeds
//! events: journaled in the store with the pending records of its runs, in
//! one commit (a duplicate is dropped there). The daemon runs them: a
//! running `zoomwire run` picks them up within a second or so, as it does
//! runs put back by `zoomwire runs retry`; a stopped one when it next
//! starts. So the command is safe beside a running daemon, and a run never
//! happens in two processes.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};

use super::rules_args::{CommandSettings, RuleArgs, print_rule_errors};
use super::{CommandError, CommandResult, EXIT_FAILED};
use zoomwire_engine::config::{Settings, ZoomAccount};
use zoomwire_engine::duration::parse_duration;
use zoomwire_engine::effects::BoxFuture;
use zoomwire_engine::effects::recorder::RecordingEffects;
use zoomwire_engine::engine::executor::Executor;
use zoomwire_engine::engine::journal::Journal;
use zoomwire_engine::event::Event;
use zoomwire_engine::journal::JournalMode;
use zoomwire_engine::journal::postgres::{PostgresJournal, PostgresOptions};
use zoomwire_engine::journal::{JournalOptions, SqliteJournal};
use zoomwire_engine::reconcile::{
    EventFeed, KnownEvents, PassContext, PassReport, listened_kinds, reconcile_window,
};
use zoomwire_engine::rules::RuleSet;
use zoomwire_engine::script::{ScriptPool, vars_value};
use zoomwire_engine::zoom::missed::{MissedFinder, Window};
use zoomwire_engine::zoom::oauth::OAuthClient;

pub struct ReconcileArgs {
    /// `2024-11-19T08:00:00Z`, `2024-11-19` (UTC midnight) or a duration ago (`2h`).
    pub since: String,
    pub until: Option<String>,
    pub dry_run: bool,
    /// Only this account; every configured one by default.
    pub account: Option<String>,
    /// The rules to journal runs for: those the daemon loads (`--rules`,
    /// `--scripts` as given to `zoomwire run`).
    pub rules: RuleArgs,
}

/// A moment as the operator writes it: RFC 3339, a UTC date, or a duration ago.
pub fn parse_moment(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(day.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    if let Ok(ago) = parse_duration(text) {
        return chrono::Duration::from_std(ago)
            .map(|ago| now - ago)
            .map_err(|e| e.to_string());
    }
    Err(format!(
        "`{text}` is not a time: write 2024-11-19T08:00:00Z, 2024-11-19 (UTC) or a duration ago such as 2h"
    ))
}

pub async fn run(args: ReconcileArgs) -> CommandResult {
    let loaded = args.rules.load_settings()?;
    let settings = &loaded.settings;
    let window = window(&args)?;
    warn_past_dedupe_window(settings, &window);
    let accounts = accounts(settings, args.account.as_deref())?;
    let rule_set = rule_set(&loaded)?;
    let kinds = listened_kinds(&rule_set);
    if kinds.is_empty() {
        println!(
            "no enabled rule listens to recording.completed, meeting.ended or user.created: nothing to reconcile"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let store = open_store(settings, args.dry_run).await?;
    let mut failed = false;
    for account in accounts {
        let report = reconcile_account(
            settings,
            account,
            &store,
            &rule_set,
            &kinds,
            window,
            args.dry_run,
        )
        .await?;
        failed |= !report.errors.is_empty();
        print_report(&account.name, &report, args.dry_run);
    }
    if !args.dry_run && store.is_some() {
        println!(
            "the runs of what was fed are pending in the store: a running `zoomwire run` starts them within seconds, a stopped one when it next starts"
        );
    }
    Ok(if failed {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

fn window(args: &ReconcileArgs) -> Result<Window, CommandError> {
    let now = Utc::now();
    let since =
        parse_moment(&args.since, now).map_err(|e| CommandError::Usage(format!("--since: {e}")))?;
    let until = match &args.until {
        Some(text) => {
            parse_moment(text, now).map_err(|e| CommandError::Usage(format!("--until: {e}")))?
        }
        None => now,
    };
    if since >= until {
        return Err(CommandError::Usage(format!(
            "--since ({}) must be before --until ({})",
            since.to_rfc3339(),
            until.to_rfc3339()
        )));
    }
    Ok(Window {
        start: since,
        end: until,
    })
}

/// Beyond the dedupe window the store no longer knows what already ran.
fn warn_past_dedupe_window(settings: &Settings, window: &Window) {
    let remembered = chrono::Duration::from_std(settings.journal.dedupe_window)
        .map(|window| Utc::now() - window)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    if window.start < remembered {
        eprintln!(
            "warning: --since reaches back before the dedupe window ({}): an event seen before then is not recognised and would run again",
            remembered.to_rfc3339()
        );
    }
}

fn accounts<'a>(
    settings: &'a Settings,
    only: Option<&str>,
) -> Result<Vec<&'a ZoomAccount>, CommandError> {
    if settings.accounts.is_empty() {
        return Err(CommandError::Usage(
            "no zoom account is configured: set ZOOM_ACCOUNT_ID, ZOOM_CLIENT_ID and ZOOM_CLIENT_SECRET".into(),
        ));
    }
    match only {
        None => Ok(settings.accounts.iter().collect()),
        Some(name) => settings.account(name).map(|a| vec![a]).ok_or_else(|| {
            let names: Vec<&str> = settings.accounts.iter().map(|a| a.name.as_str()).collect();
            CommandError::Usage(format!(
                "--account: no zoom account is named `{name}` (configured: {})",
                names.join(", ")
            ))
        }),
    }
}

/// The rules the daemon runs, under the configured sandbox limits.
fn rule_set(loaded: &CommandSettings) -> Result<Arc<RuleSet>, CommandError> {
    loaded.load_rules().map_err(|errors| {
        print_rule_errors(&errors);
        CommandError::Usage("the rules did not load".into())
    })
}

/// The daemon's store, as the seams reconciliation uses.
#[derive(Clone)]
struct Store {
    journal: Arc<dyn Journal>,
    known: Arc<dyn KnownEvents>,
}

impl Store {
    fn of<J: Journal + KnownEvents + Clone>(journal: J) -> Store {
        Store {
            journal: Arc::new(journal.clone()),
            known: Arc::new(journal),
        }
    }
}

/// The store the daemon uses; `None` for a dry run when the daemon keeps
/// its journal in memory (then nothing is known). With PostgreSQL, the runs
/// of what is fed belong to no live node: the first daemon to look takes them.
async fn open_store(settings: &Settings, dry_run: bool) -> Result<Option<Store>, CommandError> {
    if settings.journal.store == JournalMode::Memory {
        if dry_run {
            eprintln!(
                "the store is in memory (ZOOMWIRE_JOURNAL=memory): every event listed counts as unseen"
            );
            return Ok(None);
        }
        return Err(CommandError::Usage(
            "the daemon keeps its journal in memory (ZOOMWIRE_JOURNAL=memory): there is no store to feed; use --dry-run to list".into(),
        ));
    }
    if let (JournalMode::Postgres, Some(target)) =
        (settings.journal.store, &settings.journal.database)
    {
        let options = PostgresOptions {
            node: "zoomwire-reconcile".into(),
            seal_dir: Some(settings.data_dir.clone()),
            pool_size: 2,
            limits: settings.journal_options(),
            ..PostgresOptions::default()
        };
        return PostgresJournal::open(target, options)
            .await
            .map(|journal| Some(Store::of(journal)))
            .map_err(|e| CommandError::Other(e.into()));
    }
    SqliteJournal::open(&settings.data_dir, JournalOptions::for_command())
        .map(|journal| Some(Store::of(journal)))
        .map_err(|e| CommandError::Other(e.into()))
}

async fn reconcile_account(
    settings: &Settings,
    account: &ZoomAccount,
    store: &Option<Store>,
    rule_set: &Arc<RuleSet>,
    kinds: &[zoomwire_engine::zoom::missed::MissedKind],
    window: Window,
    dry_run: bool,
) -> Result<PassReport, CommandError> {
    let tokens = OAuthClient::new(settings.oauth_config(account))
        .map_err(|e| CommandError::Usage(format!("account `{}`: {e}", account.name)))?;
    let finder = MissedFinder::connect(
        settings.live_config().zoom_api_base,
        Arc::new(tokens),
        &account.account_id,
    )
    .map_err(|e| CommandError::Other(anyhow::anyhow!(e)))?;
    let known: Arc<dyn KnownEvents> = match store {
        Some(store) => store.known.clone(),
        None => Arc::new(NothingKnown),
    };
    let feed = Printed {
        account: account.name.clone(),
        into: store.as_ref().filter(|_| !dry_run).map(|store| {
            Journaled::new(store.journal.clone(), rule_set, vars_value(&settings.vars))
        }),
    };
    let context = PassContext {
        account: &account.name,
        source: &finder,
        known: known.as_ref(),
        feed: &feed,
        complete: feed.into.is_some(),
    };
    let trigger = "manual";
    Ok(reconcile_window(&context, trigger, kinds, window).await)
}

fn print_report(account: &str, report: &PassReport, dry_run: bool) {
    let verb = if dry_run { "would feed" } else { "fed" };
    println!(
        "account {account}: {} to {} ({}): zoom listed {}, {} already seen, {} missed, {verb} {}",
        report.window.start.to_rfc3339(),
        report.window.end.to_rfc3339(),
        report.types.join(", "),
        report.listed,
        report.known,
        report.found,
        report.fed,
    );
    for skipped in &report.skipped {
        println!("  skipped {skipped}");
    }
    for error in &report.errors {
        eprintln!("  error: {error}");
    }
}

/// With the daemon's store in memory, a dry run knows nothing.
struct NothingKnown;

impl KnownEvents for NothingKnown {
    fn is_known<'a>(&'a self, _id: &'a str) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async { Ok(false) })
    }
}

/// Prints every event found, and journals it unless this is a dry run.
struct Printed {
    account: String,
    into: Option<Journaled>,
}

impl EventFeed for Printed {
    fn feed(&self, event: Event) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let line = format!("  {}  {}  {}", event.event_type, event.id, describe(&event));
            match &self.into {
                None => println!("{line}  (dry run: not fed)"),
                Some(journaled) => match journaled.accept(event).await? {
                    true => println!("{line}  fed (account {})", self.account),
                    false => println!("{line}  already in the store"),
                },
            }
            Ok(())
        })
    }
}

/// What a person recognises an event by.
fn describe(event: &Event) -> String {
    let body = event.body_json();
    let object = &body["payload"]["object"];
    ["topic", "email", "start_time"]
        .iter()
        .filter_map(|field| object.get(*field).and_then(|v| v.as_str()))
        .collect::<Vec<_>>()
        .join("  ")
}

/// Journals events with their pending runs, as the daemon's intake does,
/// without running them.
struct Journaled {
    executor: Executor,
    rule_set: Arc<RuleSet>,
}

impl Journaled {
    /// `vars` are the configured ones: conditions read them to decide
    /// which runs are journaled, as in the daemon.
    fn new(journal: Arc<dyn Journal>, rule_set: &Arc<RuleSet>, vars: rhai::Dynamic) -> Journaled {
        let executor = Executor::new(
            journal,
            Arc::new(RecordingEffects::default()),
            Arc::new(ScriptPool::new(1, 1 << 20)),
            vars,
        );
        Journaled {
            executor,
            rule_set: rule_set.clone(),
        }
    }

    /// Journals the event and its runs; false for a duplicate.
    async fn accept(&self, event: Event) -> Result<bool, String> {
        let prepared = self.executor.prepare(&self.rule_set, event);
        let mut delay = Duration::from_millis(100);
        for _ in 0..5 {
            match self.executor.accept(&prepared).await {
                Ok(fresh) => return Ok(fresh),
                Err(error) => {
                    tracing::warn!(error = %error, "cannot journal a reconciled event; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        Err("the store refused the event five times".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_are_dates_times_or_durations_ago() {
        let now = DateTime::parse_from_rfc3339("2024-11-20T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_moment("2024-11-19T08:30:00+01:00", now)
                .unwrap()
                .to_rfc3339(),
            "2024-11-19T07:30:00+00:00"
        );
        assert_eq!(
            parse_moment("2024-11-19", now).unwrap().to_rfc3339(),
            "2024-11-19T00:00:00+00:00"
        );
        assert_eq!(
            parse_moment("2h", now).unwrap().to_rfc3339(),
            "2024-11-20T10:00:00+00:00"
        );
        assert!(
            parse_moment("yesterday", now)
                .unwrap_err()
                .contains("is not a time")
        );
    }
}
