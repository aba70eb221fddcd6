//! The one backoff policy: capped exponential waits with a named jitter,
//! used by the HTTP clients' transport retries, the WebSocket's reconnects,
//! the Zoom rate limiter's pauses, the daemon's wait for a first token and
//! rules' retries.

use std::time::Duration;

/// Waits that double from `first` up to `max`, spread by `jitter`.
///
/// The jitter differs by use, so it is named rather than fixed: spreading
/// many clients that fail together wants a wide spread, while a wait that
/// someone configured or reads in a log wants a floor or an exact value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    pub jitter: Jitter,
}

/// How a wait is spread around its capped value `d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Exactly `d`: the daemon waiting alone for its own first token, whose
    /// log names each wait.
    None,
    /// Uniform in `0..=d` (full jitter): WebSocket reconnects, where every
    /// node and connection may drop at once and the widest spread keeps them
    /// from returning together.
    Full,
    /// Uniform in `d/2..=d` (equal jitter): rule retries, so half the rule's
    /// `backoff` is a floor its author can count on.
    Equal,
    /// Uniform in `d..2d`: the HTTP clients' transport retries, which wait at
    /// least the policy's `min_backoff` before asking a struggling peer again.
    Added,
    /// Uniform in `0.75d..=1.25d`: pauses after a rate limit, which should
    /// stay near the second-granular limit they wait out.
    Spread,
}

/// Doublings past this change nothing: every cap in use is reached sooner.
const MAX_DOUBLINGS: u32 = 30;

impl Backoff {
    /// The wait before retry `retry` (0 for the first): `first * 2^retry`,
    /// at most `max`, jittered.
    pub fn delay(&self, retry: u32) -> Duration {
        let capped = self
            .first
            .saturating_mul(1 << retry.min(MAX_DOUBLINGS))
            .min(self.max);
        self.jitter.apply(capped)
    }

    /// The waits before retries `0..retries`, in order.
    pub fn delays(self, retries: u32) -> impl Iterator<Item = Duration> {
        (0..retries).map(move |retry| self.delay(retry))
    }
}

impl Jitter {
    /// `delay` spread as this jitter says.
    pub fn apply(self, delay: Duration) -> Duration {
        match self {
            Jitter::None => delay,
            Jitter::Full => delay.mul_f64(fastrand::f64()),
            Jitter::Equal => delay / 2 + (delay / 2).mul_f64(fastrand::f64()),
            Jitter::Added => delay + delay.mul_f64(fastrand::f64()),
            Jitter::Spread => delay.mul_f64(0.75 + fastrand::f64() * 0.5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(jitter: Jitter) -> Backoff {
        Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(10),
            jitter,
        }
    }

    #[test]
    fn doubles_up_to_the_cap() {
        let exact = backoff(Jitter::None);
        let delays: Vec<u64> = exact.delays(6).map(|d| d.as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(exact.delay(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn each_jitter_stays_in_its_range() {
        let secs = Duration::from_secs;
        for _ in 0..200 {
            let full = backoff(Jitter::Full).delay(3);
            assert!(full <= secs(8), "{full:?}");
            let equal = backoff(Jitter::Equal).delay(3);
            assert!(equal >= secs(4) && equal <= secs(8), "{equal:?}");
            let added = backoff(Jitter::Added).delay(3);
            assert!(added >= secs(8) && added <= secs(16), "{added:?}");
            let spread = backoff(Jitter::Spread).delay(3);
            assert!(spread >= secs(6) && spread <= secs(10), "{spread:?}");
        }
    }

    #[test]
    fn full_jitter_varies() {
        let spread: std::collections::BTreeSet<Duration> =
            (0..20).map(|_| backoff(Jitter::Full).delay(10)).collect();
        assert!(spread.len() > 1);
    }
}
