//! Cron schedules: parsing a rule's `schedule:` and `timezone:` and
//! computing its firings. A leaf: the scheduler that fires them through the
//! executor is `crate::scheduler`.
//!
//! The cron crate counts numeric days of the week from Sunday = 1, so `1-5`
//! would mean Sunday to Thursday. Users write Unix cron, where `1-5` is
//! Monday to Friday and both 0 and 7 are Sunday: numeric days are translated
//! into day names before the expression reaches the crate.
//!
//! Daylight saving: evaluated in a real time zone, the cron crate skips a
//! local time that does not exist (02:30 on the night clocks spring forward
//! never fires) and fires a local time that happens twice twice (02:30 on
//! the night clocks fall back). Here the crate only ever sees wall-clock
//! time, and each wall-clock firing time `T` fires once, at the first
//! instant the local clock reads `T` or later: a time repeated by a fall
//! back fires at its first occurrence only, and a time skipped by a spring
//! forward fires at the end of the gap (02:30 in Europe/Berlin fires at
//! 03:00 CEST that day). Several times inside one gap fire once, at its end.

use std::str::FromStr;

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

/// Most wall-clock firings looked at in one search before giving up: a
/// schedule firing every second skips at most an hour of them around a fall back.
const MAX_STEPS: usize = 100_000;

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

    /// The first firing strictly after `after` (see the module notes on daylight saving).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // A wall-clock time at or before `after`'s local time was reached by `after`.
        let local = self.local(after).and_utc();
        self.schedule
            .after(&local)
            .take(MAX_STEPS)
            .filter_map(|wall| first_reach(self.timezone, wall.naive_utc()))
            .find(|at| *at > after)
    }

    /// The latest firing at or before `at`.
    pub fn last_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // The local clock may have read up to one fall back's worth more than it reads now.
        let lag = (self.offset_seconds(at - Duration::hours(3)) - self.offset_seconds(at)).max(0);
        let upper = self.local(at) + Duration::seconds(lag + 1);
        self.schedule
            .after(&upper.and_utc())
            .rev()
            .take(MAX_STEPS)
            .filter_map(|wall| first_reach(self.timezone, wall.naive_utc()))
            .find(|instant| *instant <= at)
    }

    /// The latest firing strictly before `at`.
    pub fn prev_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.last_at_or_before(at - Duration::milliseconds(1))
    }

    fn local(&self, at: DateTime<Utc>) -> NaiveDateTime {
        at.with_timezone(&self.timezone).naive_local()
    }

    fn offset_seconds(&self, at: DateTime<Utc>) -> i64 {
        i64::from(
            self.timezone
                .offset_from_utc_datetime(&at.naive_utc())
                .fix()
                .local_minus_utc(),
        )
    }
}

/// The first instant at which the clock of `timezone` reads `wall` or later.
/// This is monotonic in `wall`, which the searches above rely on.
fn first_reach(timezone: Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    match timezone.from_local_datetime(&wall) {
        LocalResult::Single(at) => Some(at.with_timezone(&Utc)),
        LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
        LocalResult::None => end_of_gap(timezone, wall),
    }
}

/// `wall` does not exist (the clock springs forward over it): the instant the
/// clock jumps past it, found by bisection over a window no gap outlasts.
fn end_of_gap(timezone: Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    let reads_at_least = |seconds: i64| {
        DateTime::from_timestamp(seconds, 0)
            .map(|at| timezone.from_utc_datetime(&at.naive_utc()).naive_local() >= wall)
    };
    let centre = wall.and_utc().timestamp();
    let (mut low, mut high) = (centre - 36 * 3600, centre + 36 * 3600);
    if reads_at_least(low)? || !reads_at_least(high)? {
        return None;
    }
    while high - low > 1 {
        let middle = low + (high - low) / 2;
        if reads_at_least(middle)? {
            high = middle;
        } else {
            low = middle;
        }
    }
    DateTime::from_timestamp(high, 0)
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

    fn berlin(expression: &str) -> CronSchedule {
        CronSchedule::parse(expression, Some("Europe/Berlin"), false).unwrap()
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    fn firings(schedule: &CronSchedule, from: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        let mut at = from;
        (0..count)
            .map(|_| {
                at = schedule.next_after(at).unwrap();
                at
            })
            .collect()
    }

    #[test]
    fn the_cron_crate_alone_skips_spring_and_doubles_autumn() {
        // What this module corrects: the crate evaluated in the real zone.
        let raw = cron::Schedule::from_str("0 30 2 * * *").unwrap();
        let spring: Vec<_> = raw
            .after(&utc(2026, 3, 27, 12, 0).with_timezone(&Tz::Europe__Berlin))
            .take(2)
            .map(|t| t.with_timezone(&Utc))
            .collect();
        assert_eq!(
            spring,
            vec![utc(2026, 3, 28, 1, 30), utc(2026, 3, 30, 0, 30)]
        );
        let autumn: Vec<_> = raw
            .after(&utc(2026, 10, 24, 12, 0).with_timezone(&Tz::Europe__Berlin))
            .take(2)
            .map(|t| t.with_timezone(&Utc))
            .collect();
        assert_eq!(
            autumn,
            vec![utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 30)]
        );
    }

    #[test]
    fn a_time_skipped_by_spring_forward_fires_once_at_the_end_of_the_gap() {
        // 2026-03-29: Berlin jumps from 02:00 CET to 03:00 CEST (01:00 UTC).
        let daily = berlin("0 30 2 * * *");
        assert_eq!(
            firings(&daily, utc(2026, 3, 27, 12, 0), 3),
            vec![
                utc(2026, 3, 28, 1, 30), // 02:30 CET
                utc(2026, 3, 29, 1, 0),  // 03:00 CEST, the gap's end
                utc(2026, 3, 30, 0, 30), // 02:30 CEST
            ]
        );
        // Every quarter hour: the gap's four times fire once, together with 03:00.
        let quarterly = berlin("0 */15 * * * *");
        assert_eq!(
            firings(&quarterly, utc(2026, 3, 29, 0, 30), 3),
            vec![
                utc(2026, 3, 29, 0, 45),
                utc(2026, 3, 29, 1, 0),
                utc(2026, 3, 29, 1, 15)
            ]
        );
    }

    #[test]
    fn a_time_repeated_by_fall_back_fires_once_at_its_first_occurrence() {
        // 2026-10-25: Berlin goes back from 03:00 CEST to 02:00 CET (01:00 UTC).
        let daily = berlin("0 30 2 * * *");
        assert_eq!(
            firings(&daily, utc(2026, 10, 23, 12, 0), 3),
            vec![
                utc(2026, 10, 24, 0, 30), // 02:30 CEST
                utc(2026, 10, 25, 0, 30), // 02:30 CEST, first of two
                utc(2026, 10, 26, 1, 30), // 02:30 CET
            ]
        );
        // Asked from inside the repeated hour, the repeated times are already past.
        assert_eq!(
            daily.next_after(utc(2026, 10, 25, 1, 10)),
            Some(utc(2026, 10, 26, 1, 30))
        );
        assert_eq!(
            daily.last_at_or_before(utc(2026, 10, 25, 1, 40)),
            Some(utc(2026, 10, 25, 0, 30))
        );
        let quarterly = berlin("0 */15 * * * *");
        assert_eq!(
            firings(&quarterly, utc(2026, 10, 25, 0, 40), 2),
            vec![utc(2026, 10, 25, 0, 45), utc(2026, 10, 25, 2, 0)]
        );
        assert_eq!(
            quarterly.last_at_or_before(utc(2026, 10, 25, 1, 50)),
            Some(utc(2026, 10, 25, 0, 45))
        );
    }

    #[test]
    fn the_latest_and_previous_firings() {
        let weekly = CronSchedule::parse("0 0 9 * * Mon", None, false).unwrap();
        let monday = utc(2026, 11, 23, 9, 0);
        assert_eq!(weekly.last_at_or_before(monday), Some(monday));
        assert_eq!(
            weekly.prev_before(monday),
            Some(monday - chrono::Duration::days(7))
        );
        assert_eq!(
            weekly.last_at_or_before(monday + chrono::Duration::days(3)),
            Some(monday)
        );
        let spring = berlin("0 30 2 * * *");
        assert_eq!(
            spring.last_at_or_before(utc(2026, 3, 29, 1, 20)),
            Some(utc(2026, 3, 29, 1, 0))
        );
    }
}
