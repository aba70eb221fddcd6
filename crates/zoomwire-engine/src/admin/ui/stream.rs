//! `/ui/stream`: the page's Server-Sent Events. Each event only says what
//! changed, `events` or `runs` (its data is a count, since browsers drop
//! events without data); the parts of the page listening for it
//! (`hx-trigger="sse:runs"`) fetch their fragment again. So the stream
//! carries no data of its own, and what a page shows always comes from the
//! same handlers as its first load.
//!
//! The stream looks at the activity counts every [`LOOK_EVERY`]: changes in
//! between are coalesced, so a busy daemon costs each open page at most two
//! reloads a second, and the daemon's hot path never wakes anyone. The
//! stream ends when the server stops.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminContext;
use crate::admin::activity::{Activity, Ticks};

/// How often a stream looks for changes.
pub const LOOK_EVERY: Duration = Duration::from_millis(500);

pub async fn stream(
    State(context): State<AdminContext>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let activity = context.state.activity().clone();
    let mut looks = tokio::time::interval(LOOK_EVERY);
    looks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let follow = Follow {
        seen: activity.ticks(),
        activity,
        looks,
        shutdown: context.shutdown.clone(),
        queue: VecDeque::new(),
    };
    let events = futures_util::stream::unfold(follow, Follow::next);
    Sse::new(events).keep_alive(KeepAlive::default())
}

struct Follow {
    activity: Arc<Activity>,
    seen: Ticks,
    looks: tokio::time::Interval,
    shutdown: CancellationToken,
    queue: VecDeque<Event>,
}

impl Follow {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Follow)> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some((Ok(event), self));
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                _ = self.looks.tick() => {}
            }
            let now = self.activity.ticks();
            if now.events != self.seen.events {
                self.queue.push_back(
                    Event::default()
                        .event("events")
                        .data(now.events.to_string()),
                );
            }
            if now.runs != self.seen.runs {
                self.queue
                    .push_back(Event::default().event("runs").data(now.runs.to_string()));
            }
            self.seen = now;
        }
    }
}
