//! The overview's chart: events and finished runs per minute over the last
//! hour, as SVG drawn on the server (no script, so the page's
//! Content-Security-Policy stays strict). This module only computes the
//! geometry; `overview_live.html` draws it with plain SVG attributes and the
//! stylesheet's classes.

use crate::admin::activity::MinuteCount;

/// Drawing area, in SVG units.
pub const WIDTH: u32 = 600;
pub const HEIGHT: u32 = 120;
/// Room under the bars for the axis labels.
const AXIS: u32 = 16;

/// One minute's bars.
pub struct ChartMinute {
    /// Left edge of the minute's slot.
    pub x: u32,
    pub events_y: u32,
    pub events_height: u32,
    pub runs_y: u32,
    pub runs_height: u32,
    pub failed_y: u32,
    pub failed_height: u32,
    /// The tooltip: the minute and its counts.
    pub title: String,
}

pub struct Chart {
    pub width: u32,
    pub height: u32,
    /// The bars' baseline.
    pub base: u32,
    /// Width of one bar (events and runs sit side by side in a slot).
    pub bar: u32,
    pub minutes: Vec<ChartMinute>,
    /// The value the top of the chart stands for.
    pub top: u64,
    pub first_label: String,
    pub last_label: String,
    totals: (u64, u64, u64),
}

impl Chart {
    pub fn new(minutes: &[MinuteCount]) -> Chart {
        let base = HEIGHT - AXIS;
        let top = minutes
            .iter()
            .map(|m| m.events.max(m.runs))
            .max()
            .unwrap_or(0)
            .max(1);
        let slot = WIDTH / (minutes.len().max(1) as u32);
        let bar = (slot.saturating_sub(2) / 2).max(1);
        let scale = |value: u64| -> u32 {
            // Rounded up, so that a minute with anything in it shows a bar.
            ((value * u64::from(base)).div_ceil(top)) as u32
        };
        let label = |m: Option<&MinuteCount>| {
            m.map(|m| m.minute.format("%H:%MZ").to_string())
                .unwrap_or_default()
        };
        Chart {
            width: WIDTH,
            height: HEIGHT,
            base,
            bar,
            minutes: minutes
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let (events, runs, failed) = (scale(m.events), scale(m.runs), scale(m.failed));
                    ChartMinute {
                        x: i as u32 * slot,
                        events_y: base - events,
                        events_height: events,
                        runs_y: base - runs,
                        runs_height: runs,
                        failed_y: base - failed,
                        failed_height: failed,
                        title: format!(
                            "{}: {} events, {} runs finished ({} failed)",
                            m.minute.format("%H:%MZ"),
                            m.events,
                            m.runs,
                            m.failed
                        ),
                    }
                })
                .collect(),
            top,
            first_label: label(minutes.first()),
            last_label: label(minutes.last()),
            totals: minutes.iter().fold((0, 0, 0), |(e, r, f), m| {
                (e + m.events, r + m.runs, f + m.failed)
            }),
        }
    }

    /// Events, finished runs and failed runs over the whole chart.
    pub fn totals(&self) -> (u64, u64, u64) {
        self.totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn bars_scale_to_the_busiest_minute_and_never_vanish() {
        let minute = |n: u32, events: u64, runs: u64, failed: u64| MinuteCount {
            minute: Utc.with_ymd_and_hms(2026, 1, 2, 9, n, 0).unwrap(),
            events,
            runs,
            failed,
        };
        let chart = Chart::new(&[
            minute(0, 0, 0, 0),
            minute(1, 200, 100, 1),
            minute(2, 1, 0, 0),
        ]);
        assert_eq!(chart.top, 200);
        assert_eq!(chart.minutes[0].events_height, 0);
        assert_eq!(chart.minutes[1].events_height, chart.base);
        assert_eq!(chart.minutes[1].runs_height, chart.base / 2);
        assert!(
            chart.minutes[1].failed_height >= 1,
            "one failure still shows"
        );
        assert!(chart.minutes[2].events_height >= 1);
        assert_eq!(chart.totals(), (201, 100, 1));
        assert_eq!(chart.first_label, "09:00Z");
        assert_eq!(
            chart.minutes[1].title,
            "09:01Z: 200 events, 100 runs finished (1 failed)"
        );
    }
}
