//! Cron schedules as an event source: parsing a rule's `schedule:` and
//! `timezone:`, and computing its firings.
//!
//! The cron crate counts numeric days of the week from Sunday = 1, so `1-5`
//! would mean Sunday to Thursday. Users write Unix cron, where `1-5` is
//! Monday to Friday and both 0 and 7 are Sunday: numeric days are translated
//! into day names before the expression reaches the crate.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    /// The expression as written.
    pub expression: String,
    /// What the cron crate was given.
    pub normalized: String,
    pub timezone: Tz,
    pub catch_up: bool,
    schedule: cron::Schedule,
}

impl CronSchedule {
    /// Parses `expression` (6 or 7 fields, seconds first) in `timezone` (IANA, UTC by default).
    pub fn parse(
        expression: &str,
        timezone: Option<&str>,
        catch_up: bool,
    ) -> Result<CronSchedule, String> {
        let timezone = match timezone {
            None => Tz::UTC,
            Some(name) => Tz::from_str(name).map_err(|_| {
                format!("unknown time zone `{name}`, expected an IANA name such as Europe/Berlin")
            })?,
        };
        let normalized = normalize(expression)?;
        let schedule = cron::Schedule::from_str(&normalized)
            .map_err(|e| format!("invalid schedule `{expression}`: {e}"))?;
        Ok(CronSchedule {
            expression: expression.to_string(),
            normalized,
            timezone,
            catch_up,
            schedule,
        })
    }

    /// The first firing strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule
            .after(&after.with_timezone(&self.timezone))
            .next()
            .map(|at| at.with_timezone(&Utc))
    }
}

/// Checks the field count and translates Unix-style numeric days of the week.
fn normalize(expression: &str) -> Result<String, String> {
    let mut fields: Vec<String> = expression.split_whitespace().map(str::to_string).collect();
    if !(6..=7).contains(&fields.len()) {
        return Err(format!(
            "invalid schedule `{expression}`: expected 6 or 7 fields (seconds first, such as \"0 0 9 * * Mon\"), found {}",
            fields.len()
        ));
    }
    fields[5] = translate_days_of_week(&fields[5])
        .map_err(|e| format!("invalid schedule `{expression}`: {e}"))?;
    Ok(fields.join(" "))
}

const DAY_NAMES: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

fn translate_days_of_week(field: &str) -> Result<String, String> {
    let items: Result<Vec<String>, String> = field.split(',').map(translate_day_item).collect();
    Ok(items?.join(","))
}

/// One comma-separated item: numeric forms (`1`, `1-5`, `*/2`, `1-5/2`) become day names.
fn translate_day_item(item: &str) -> Result<String, String> {
    let (range, step) = match item.split_once('/') {
        Some((range, step)) => (range, Some(step)),
        None => (item, None),
    };
    let numeric = |s: &str| s.chars().all(|c| c.is_ascii_digit()) && !s.is_empty();
    let (start, end) = match range.split_once('-') {
        Some((a, b)) if numeric(a) && numeric(b) => (day_number(a)?, day_number(b)?),
        None if numeric(range) => {
            let day = day_number(range)?;
            (day, if step.is_some() { 6 } else { day })
        }
        None if range == "*" && step.is_some() => (0, 6),
        _ => return Ok(item.to_string()),
    };
    let step: u32 = match step {
        Some(step) => step
            .parse()
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| format!("invalid day-of-week step `{item}`"))?,
        None => 1,
    };
    // Unix allows 7 for Sunday, also as a range end (`5-7`).
    let end = if end < start && end == 0 { 7 } else { end };
    if end < start {
        return Err(format!("day-of-week range `{item}` runs backwards"));
    }
    let days: Vec<&str> = (start..=end)
        .step_by(step as usize)
        .map(|d| DAY_NAMES[(d % 7) as usize])
        .collect();
    Ok(days.join(","))
}

fn day_number(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(day) if day <= 7 => Ok(day),
        _ => Err(format!(
            "day of week `{text}` is out of range 0-7 (0 and 7 are Sunday)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Weekday};

    fn weekdays(expression: &str) -> Vec<Weekday> {
        let schedule = CronSchedule::parse(expression, None, false).unwrap();
        // Monday 2026-11-23 00:00 UTC, one week.
        let mut at = Utc.with_ymd_and_hms(2026, 11, 22, 23, 0, 0).unwrap();
        let mut days = Vec::new();
        while let Some(next) = schedule.next_after(at) {
            if next > Utc.with_ymd_and_hms(2026, 11, 29, 23, 59, 59).unwrap() {
                break;
            }
            days.push(next.weekday());
            at = next;
        }
        days
    }

    #[test]
    fn numeric_days_mean_what_unix_cron_means() {
        use Weekday::*;
        assert_eq!(weekdays("0 0 9 * * 1-5"), vec![Mon, Tue, Wed, Thu, Fri]);
        assert_eq!(weekdays("0 0 9 * * Mon-Fri"), vec![Mon, Tue, Wed, Thu, Fri]);
        assert_eq!(weekdays("0 0 9 * * 0"), vec![Sun]);
        assert_eq!(weekdays("0 0 9 * * 7"), vec![Sun]);
        assert_eq!(weekdays("0 0 9 * * 5-7"), vec![Fri, Sat, Sun]);
        assert_eq!(weekdays("0 0 9 * * 1,3"), vec![Mon, Wed]);
        assert_eq!(weekdays("0 0 9 * * */2"), vec![Tue, Thu, Sat, Sun]);
    }

    #[test]
    fn refuses_bad_expressions_with_a_reason() {
        let five = CronSchedule::parse("0 9 * * 1", None, false).unwrap_err();
        assert!(five.contains("expected 6 or 7 fields"), "{five}");
        let zone = CronSchedule::parse("0 0 9 * * Mon", Some("Mars/Base"), false).unwrap_err();
        assert!(zone.contains("unknown time zone `Mars/Base`"), "{zone}");
        let day = CronSchedule::parse("0 0 9 * * 8", None, false).unwrap_err();
        assert!(day.contains("out of range"), "{day}");
        assert!(CronSchedule::parse("0 0 25 * * *", None, false).is_err());
    }

    #[test]
    fn fires_in_the_rules_time_zone() {
        let schedule = CronSchedule::parse("0 0 9 * * Mon", Some("Europe/Berlin"), false).unwrap();
        let next = schedule
            .next_after(Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap())
            .unwrap();
        assert_eq!(next, Utc.with_ymd_and_hms(2026, 11, 23, 8, 0, 0).unwrap());
    }
}
