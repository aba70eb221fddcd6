//! The bench's failover phase, with several nodes: a stream at the bench's
//! rate, `kill -9` of the node holding the subscription's lease, and the
//! stream going on through the gap until the new holder has had
//! [`AFTER_HOLDER`] of it.
//!
//! What it times, from the kill: the new holder's WebSocket accepted by the
//! simulator, the first event sent after the kill that reached a node, and
//! the first Slack post of an event sent after the kill.
//!
//! What it cannot promise, and counts instead: Zoom's WebSocket does not
//! resend an event sent while no connection is open (reconciliation later
//! lists some kinds from REST, such as finished recordings, but not the
//! bench's synthetic events), so the frames sent while no node holds the
//! socket reach nobody; they are counted as lost in the gap and expect no
//! post. Every event that reached a node must post exactly once, as in the
//! other phases. Before the kill the stream pauses until everything sent
//! so far has been handled (a few milliseconds at the bench's rates): a
//! run cut in the middle of its Slack post is, by design, left in doubt and
//! goes to the dead letters, which would make the ledger's check depend on
//! where the kill falls; the e2e tests cover that case.

use std::time::Duration;

use tokio::time::Instant;

use super::Bench;
use super::process::counter_sum;
use super::workload::Generator;
use crate::bench::ledger::sent_time;

/// The stream before the kill.
pub const BEFORE_KILL: Duration = Duration::from_secs(2);
/// The stream after the new holder's first event.
pub const AFTER_HOLDER: Duration = Duration::from_secs(2);
/// How long past the lease the bench waits for a new holder.
const GRACE: Duration = Duration::from_secs(15);

/// The failover phase's figures.
#[derive(Debug, Clone, Default)]
pub struct Failover {
    pub lease_ttl: Duration,
    pub rate: u32,
    pub killed_pid: u32,
    /// How long the stream paused before the kill, for everything sent to
    /// be handled.
    pub catch_up: Duration,
    /// Events sent after the kill that reached no node (no holder).
    pub lost_in_gap: usize,
    /// Events sent after the kill that reached the new holder.
    pub delivered_after: usize,
    /// Frames that reached more than one connection (two holders): must be 0.
    pub doubled_frames: usize,
    /// Most connections seen open at once (checked at every frame): must be 1.
    pub most_open: usize,
    /// Kill to the new holder's WebSocket accepted.
    pub reconnected: Option<Duration>,
    /// Kill to the first event sent after it reaching a node.
    pub first_event: Option<Duration>,
    /// Kill to the first Slack post of an event sent after it.
    pub first_post: Option<Duration>,
}

impl Failover {
    /// A new holder took over, alone, and handled events.
    pub fn complete(&self) -> bool {
        self.reconnected.is_some()
            && self.first_post.is_some()
            && self.doubled_frames == 0
            && self.most_open <= 1
    }
}

impl Bench<'_> {
    /// Streams at `rate`, kills the holder, streams through the gap.
    pub(super) async fn failover(
        &mut self,
        generator: &mut Generator,
        rate: u32,
        lease_ttl: Duration,
    ) -> Failover {
        let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        let mut failover = Failover {
            lease_ttl,
            rate,
            ..Failover::default()
        };
        let before = ((rate as f64 * BEFORE_KILL.as_secs_f64()) as usize).max(1);
        self.stream(generator, period, before, &mut failover).await;
        let paused = Instant::now();
        self.wait_processed().await;
        failover.catch_up = paused.elapsed();
        let Some(holder) = self.holder().await else {
            eprintln!("bench: no node says it holds the subscription's lease");
            return failover;
        };
        let old: Vec<u64> = self.open_connections();
        let daemon = self.daemons[holder].take().expect("the holder is alive");
        self.counted_by_killed += daemon
            .metrics()
            .await
            .map_or(0.0, |m| counter_sum(&m, "zoomwire_events_total"));
        failover.killed_pid = daemon.pid();
        let killed_us = chrono::Utc::now().timestamp_micros();
        let killed = Instant::now();
        daemon.stop();
        // The simulator sees the socket close when the kernel resets it.
        while self.open_connections().iter().any(|id| old.contains(id))
            && killed.elapsed() < Duration::from_secs(5)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let deadline = killed + lease_ttl + GRACE;
        let mut next = Instant::now();
        loop {
            if let Some(first) = failover.first_event
                && killed.elapsed() > first + AFTER_HOLDER
            {
                break;
            }
            if Instant::now() > deadline {
                eprintln!(
                    "bench: no new holder within {:?} of the kill",
                    lease_ttl + GRACE
                );
                break;
            }
            if Instant::now() < next {
                tokio::time::sleep_until(next).await;
            }
            next += period;
            let reached = self.send_one(generator, &mut failover).await;
            if reached == 0 {
                failover.lost_in_gap += 1;
            } else {
                failover.delivered_after += 1;
                failover.first_event.get_or_insert(killed.elapsed());
            }
        }
        failover.reconnected = self
            .sim
            .connections()
            .into_iter()
            .filter(|c| c.accepted && !old.contains(&c.id))
            .map(|c| c.opened_at.timestamp_micros() - killed_us)
            .filter(|&us| us >= 0)
            .min()
            .map(micros);
        self.wait_processed().await;
        failover.first_post = self
            .sim
            .slack_posts()
            .iter()
            .filter(|post| {
                post.text
                    .as_deref()
                    .and_then(sent_time)
                    .is_some_and(|sent| sent > killed_us)
            })
            .map(|post| post.received_at_micros - killed_us)
            .min()
            .map(micros);
        failover
    }

    /// Sends `count` events at one per `period`.
    async fn stream(
        &mut self,
        generator: &mut Generator,
        period: Duration,
        count: usize,
        failover: &mut Failover,
    ) {
        let started = Instant::now();
        for i in 0..count {
            let due = started + period.mul_f64(i as f64);
            if Instant::now() < due {
                tokio::time::sleep_until(due).await;
            }
            if self.send_one(generator, failover).await == 0 {
                failover.lost_in_gap += 1;
            }
        }
    }

    /// Sends the next event, stamped now; expects its posts if it reached
    /// one connection. Answers how many it reached.
    async fn send_one(&mut self, generator: &mut Generator, failover: &mut Failover) -> usize {
        let event = generator.event();
        let frame = event.frame_sent_at(chrono::Utc::now().timestamp_micros());
        failover.most_open = failover.most_open.max(self.open_connections().len());
        let reached = self.sim.send_frame(None, frame).await;
        match reached {
            0 => {}
            1 => {
                self.expect(std::slice::from_ref(&event));
            }
            _ => failover.doubled_frames += 1,
        }
        reached
    }

    /// The live node holding the subscription's lease.
    async fn holder(&self) -> Option<usize> {
        for (index, daemon) in self.daemons.iter().enumerate() {
            if let Some(daemon) = daemon
                && daemon.holds_subscription().await
            {
                return Some(index);
            }
        }
        None
    }

    /// The simulator's open, accepted connections.
    fn open_connections(&self) -> Vec<u64> {
        self.sim
            .connections()
            .into_iter()
            .filter(|c| c.accepted && c.open)
            .map(|c| c.id)
            .collect()
    }
}

fn micros(us: i64) -> Duration {
    Duration::from_micros(us.max(0) as u64)
}

/// The phase's lines of the report.
pub(super) fn format(out: &mut String, f: &Failover) {
    use std::fmt::Write;
    let secs = |d: Option<Duration>| {
        d.map(|d| format!("{:.2} s", d.as_secs_f64()))
            .unwrap_or_else(|| "never".into())
    };
    let _ = writeln!(
        out,
        "    failover    kill -9 of the holder (pid {}) at {} events/s, lease {:?}: new holder connected {} after the kill, first event reached it {}, first post of an event sent after the kill {}{}",
        f.killed_pid,
        f.rate,
        f.lease_ttl,
        secs(f.reconnected),
        secs(f.first_event),
        secs(f.first_post),
        if f.complete() { "" } else { ": FAILED" }
    );
    let _ = writeln!(
        out,
        "                {} events sent while no node held the WebSocket reached nobody (Zoom does not resend them; not expected to post), {} reached the new holder; stream paused {:.1} ms before the kill for the holder to catch up; most connections open at once: {}, frames that reached two: {}",
        f.lost_in_gap,
        f.delivered_after,
        f.catch_up.as_secs_f64() * 1000.0,
        f.most_open,
        f.doubled_frames
    );
}
