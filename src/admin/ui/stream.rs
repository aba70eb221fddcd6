//! `/ui/stream`: the page's Server-Sent Events. Each event only says what
//! changed, `events` or `runs` (its data is a count, since browsers drop
//! events without data); the parts of the page listening for it
//! (`hx-trigger="sse:runs"`) fetch their fragment again. So the stream
//! carries no data of its own, and what a page shows always comes from the
//! same handlers as its first load.
//!
//! Changes are coalesced: after sending, the stream waits [`THROTTLE`]
//! before looking again, so a busy daemon costs each open page at most a
//! couple of reloads a second. The stream ends when the server stops.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminContext;
use crate::admin::activity::Ticks;

/// Least time between two rounds of events on one stream.
pub const THROTTLE: Duration = Duration::from_millis(500);

pub async fn stream(
    State(context): State<AdminContext>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut ticks = context.state.activity().subscribe();
    let seen = *ticks.borrow_and_update();
    let follow = Follow {
        ticks,
        seen,
        shutdown: context.shutdown.clone(),
        queue: VecDeque::new(),
        rested: true,
    };
    let events = futures_util::stream::unfold(follow, Follow::next);
    Sse::new(events).keep_alive(KeepAlive::default())
}

struct Follow {
    ticks: watch::Receiver<Ticks>,
    seen: Ticks,
    shutdown: CancellationToken,
    queue: VecDeque<Event>,
    /// False right after sending: wait [`THROTTLE`] first.
    rested: bool,
}

impl Follow {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Follow)> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some((Ok(event), self));
            }
            if !self.rested {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(THROTTLE) => self.rested = true,
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                changed = self.ticks.changed() => changed.ok()?,
            }
            let now = *self.ticks.borrow_and_update();
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
            self.rested = false;
        }
    }
}
