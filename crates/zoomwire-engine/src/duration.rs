//! Durations as people write them in rule files, settings and script calls
//! (`500ms`, `30s`, `5m`, `2h`, `1d`), and as messages show them: the one
//! parser and formatter of the crate. A leaf: it imports nothing of the crate.

use std::time::Duration;

/// Parses a whole number and a unit: `500ms`, `30s`, `5m`, `2h`, `1d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let expected = || {
        format!(
            "invalid duration `{text}`, expected a number and a unit such as 500ms, 30s, 5m, 2h, 1d"
        )
    };
    let number: u64 = number.parse().map_err(|_| expected())?;
    let millis = match unit {
        "ms" => Some(number),
        "s" => number.checked_mul(1_000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        "d" => number.checked_mul(86_400_000),
        _ => return Err(expected()),
    };
    millis.map(Duration::from_millis).ok_or_else(expected)
}

/// [`parse_duration`], or a bare whole number of seconds (settings and
/// sandbox limits accept both).
pub fn parse_seconds_or_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    parse_duration(text).ok()
}

/// Formats a duration for messages: `50ms`, `2s`, `1.5s`.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1000 {
        format!("{millis}ms")
    } else if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{}s", duration.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        for bad in [
            "",
            "5",
            "s",
            "1.5s",
            "5 min",
            "-1s",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_seconds_and_formats_durations() {
        let parse = parse_seconds_or_duration;
        assert_eq!(parse("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse("1500ms"), Some(Duration::from_millis(1500)));
        assert_eq!(parse("1.5s"), None, "one format everywhere: whole numbers");
        assert_eq!(parse("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse("2d"), Some(Duration::from_secs(172_800)));
        assert_eq!(parse("5 weeks"), None);
        assert_eq!(parse("-1s"), None);
        assert_eq!(parse(""), None);
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
        assert_eq!(format_duration(Duration::from_millis(50)), "50ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
    }
}
