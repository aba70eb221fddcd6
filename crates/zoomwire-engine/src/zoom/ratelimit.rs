//! Zoom's REST rate limits, by category, and the limiter that keeps a
//! background job of one account (reconciliation) within a share of them.
//!
//! Zoom limits each account (all its apps together) per category: Light,
//! Medium and Heavy calls per second, Resource-intensive calls per minute,
//! and a daily cap shared by Heavy and Resource-intensive calls. Rules share
//! the same account limits, so a [`CategoryLimiter`] spaces the job's calls
//! to a fraction of them ([`CategoryRates::share`]), keeps a daily budget for
//! Heavy and Resource-intensive calls that is spent rather than waited for
//! (a call beyond it is skipped, to try again after the budget refills), and
//! pauses every call of the account after a 429: until `Retry-After` when
//! Zoom says, else for about a second, doubling while 429s repeat.
//!
//! Steady spacing uses `governor`; the pause after a 429 is tokio time, so it
//! is tested with paused time.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use parking_lot::{Mutex, MutexGuard};
use serde::Serialize;
use tokio::time::Instant;

use super::rest::RateLimitHit;
use crate::backoff::{Backoff, Jitter};

/// Zoom's rate-limit categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Light,
    Medium,
    Heavy,
    ResourceIntensive,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Light => "light",
            Category::Medium => "medium",
            Category::Heavy => "heavy",
            Category::ResourceIntensive => "resource_intensive",
        }
    }

    /// Whether calls of this category count against the daily cap.
    pub fn is_daily_capped(self) -> bool {
        matches!(self, Category::Heavy | Category::ResourceIntensive)
    }
}

/// Calls allowed per category: Light, Medium and Heavy per second,
/// Resource-intensive per minute, and Heavy plus Resource-intensive per day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CategoryRates {
    pub light_per_second: u32,
    pub medium_per_second: u32,
    pub heavy_per_second: u32,
    pub resource_intensive_per_minute: u32,
    pub heavy_per_day: u32,
}

impl CategoryRates {
    /// Zoom's limits for a Pro account (the lowest paid plan).
    pub const PRO: CategoryRates = CategoryRates {
        light_per_second: 30,
        medium_per_second: 20,
        heavy_per_second: 10,
        resource_intensive_per_minute: 10,
        heavy_per_day: 30_000,
    };

    /// Zoom's limits for Business accounts and up.
    pub const BUSINESS: CategoryRates = CategoryRates {
        light_per_second: 80,
        medium_per_second: 60,
        heavy_per_second: 40,
        resource_intensive_per_minute: 20,
        heavy_per_day: 60_000,
    };

    /// `fraction` of these rates, at least one call of each kind.
    pub fn share(self, fraction: f64) -> CategoryRates {
        let part = |n: u32| ((f64::from(n) * fraction).floor() as u32).max(1);
        CategoryRates {
            light_per_second: part(self.light_per_second),
            medium_per_second: part(self.medium_per_second),
            heavy_per_second: part(self.heavy_per_second),
            resource_intensive_per_minute: part(self.resource_intensive_per_minute),
            heavy_per_day: part(self.heavy_per_day),
        }
    }
}

/// Why a call may not go now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("the daily budget of heavy and resource-intensive calls is spent")]
    DailyBudgetSpent,
}

/// How long to pause after a 429 that names no `Retry-After`, doubling per repeat.
const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause after repeated 429s that name no `Retry-After`.
const MAX_PAUSE: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Pause {
    until: Option<Instant>,
    /// 429s in a row without a success in between.
    strikes: u32,
    /// Zoom said the daily cap is reached: no daily-capped call until then.
    daily_spent_until: Option<Instant>,
}

/// One account's limiter for a background job.
pub struct CategoryLimiter {
    light: DefaultDirectRateLimiter,
    medium: DefaultDirectRateLimiter,
    heavy: DefaultDirectRateLimiter,
    resource_intensive: DefaultDirectRateLimiter,
    daily: DefaultDirectRateLimiter,
    pause: Mutex<Pause>,
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

impl CategoryLimiter {
    pub fn new(rates: CategoryRates) -> CategoryLimiter {
        let per_second = |n: u32| RateLimiter::direct(Quota::per_second(nonzero(n)));
        let per_day = nonzero(rates.heavy_per_day);
        let daily_period = Duration::from_secs(24 * 3600) / per_day.get();
        let daily = Quota::with_period(daily_period)
            .unwrap_or(Quota::per_hour(per_day))
            .allow_burst(per_day);
        CategoryLimiter {
            light: per_second(rates.light_per_second),
            medium: per_second(rates.medium_per_second),
            heavy: per_second(rates.heavy_per_second),
            resource_intensive: RateLimiter::direct(Quota::per_minute(nonzero(
                rates.resource_intensive_per_minute,
            ))),
            daily: RateLimiter::direct(daily),
            pause: Mutex::new(Pause::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pause> {
        self.pause.lock()
    }

    /// Waits until a call of `category` may go: after any pause, within the
    /// steady rate; a daily-capped call takes from the budget or is refused.
    pub async fn acquire(&self, category: Category) -> Result<(), LimitError> {
        self.wait_unpaused().await;
        if category.is_daily_capped() {
            let spent = self
                .lock()
                .daily_spent_until
                .is_some_and(|until| until > Instant::now());
            if spent || self.daily.check().is_err() {
                return Err(LimitError::DailyBudgetSpent);
            }
        }
        match category {
            Category::Light => self.light.until_ready().await,
            Category::Medium => self.medium.until_ready().await,
            Category::Heavy => self.heavy.until_ready().await,
            Category::ResourceIntensive => self.resource_intensive.until_ready().await,
        };
        Ok(())
    }

    /// Sleeps while a pause is on.
    pub async fn wait_unpaused(&self) {
        loop {
            let until = self.lock().until;
            match until {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => return,
            }
        }
    }

    /// When the current pause ends, if one is on.
    pub fn paused_until(&self) -> Option<Instant> {
        self.lock().until.filter(|until| *until > Instant::now())
    }

    /// Zoom answered 429. A daily limit stops daily-capped calls until
    /// `Retry-After` (else for a day) and pauses nothing else; any other
    /// pauses every call of the account as `Retry-After` says, else about a
    /// second, doubling while 429s repeat. Returns the pause.
    pub fn back_off(&self, hit: Option<&RateLimitHit>) -> Duration {
        let mut pause = self.lock();
        if hit.is_some_and(RateLimitHit::is_daily) {
            let delay = hit
                .and_then(|h| h.retry_after)
                .unwrap_or(Duration::from_secs(24 * 3600));
            pause.daily_spent_until = Some(Instant::now() + delay);
            return delay;
        }
        pause.strikes = pause.strikes.saturating_add(1);
        let delay = match hit.and_then(|h| h.retry_after) {
            Some(retry_after) => retry_after.max(Duration::from_millis(50)),
            None => {
                let backoff = Backoff {
                    first: FIRST_PAUSE,
                    max: MAX_PAUSE,
                    jitter: Jitter::Spread,
                };
                backoff.delay(pause.strikes - 1)
            }
        };
        let until = Instant::now() + delay;
        pause.until = Some(pause.until.map_or(until, |current| current.max(until)));
        delay
    }

    /// A call went through: the next 429 starts the doubling again.
    pub fn succeeded(&self) {
        self.lock().strikes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(retry_after: Option<Duration>) -> RateLimitHit {
        RateLimitHit {
            category: Some("Medium".into()),
            limit_type: Some("QPS".into()),
            retry_after,
        }
    }

    #[test]
    fn a_share_keeps_at_least_one_call_of_each_kind() {
        let quarter = CategoryRates::PRO.share(0.25);
        assert_eq!(quarter.light_per_second, 7);
        assert_eq!(quarter.medium_per_second, 5);
        assert_eq!(quarter.resource_intensive_per_minute, 2);
        assert_eq!(quarter.heavy_per_day, 7_500);
        let tiny = CategoryRates::PRO.share(0.0);
        assert_eq!(tiny.resource_intensive_per_minute, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_pauses_every_call_for_as_long_as_retry_after_says() {
        let limiter = CategoryLimiter::new(CategoryRates::PRO);
        let started = Instant::now();
        limiter.back_off(Some(&hit(Some(Duration::from_secs(7)))));
        limiter.acquire(Category::Light).await.unwrap();
        assert_eq!(started.elapsed().as_secs(), 7);
        assert!(limiter.paused_until().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_bare_429s_double_the_pause_up_to_a_minute() {
        let limiter = CategoryLimiter::new(CategoryRates::PRO);
        let pauses: Vec<Duration> = (0..9).map(|_| limiter.back_off(None)).collect();
        // About 1 s, 2 s, 4 s ... (±25% jitter), never past a minute and a quarter.
        assert!(
            pauses[0] >= Duration::from_millis(750) && pauses[0] <= Duration::from_millis(1250)
        );
        assert!(pauses[3] >= Duration::from_secs(6) && pauses[3] <= Duration::from_secs(10));
        assert!(pauses.iter().all(|p| *p <= Duration::from_secs(75)));
        limiter.succeeded();
        let again = limiter.back_off(None);
        assert!(again <= Duration::from_millis(1250), "{again:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_daily_limit_429_stops_only_daily_capped_calls_until_retry_after() {
        let limiter = CategoryLimiter::new(CategoryRates::PRO);
        let daily = RateLimitHit {
            category: Some("Heavy".into()),
            limit_type: Some("Daily-limit".into()),
            retry_after: Some(Duration::from_secs(3600)),
        };
        limiter.back_off(Some(&daily));
        let started = Instant::now();
        limiter.acquire(Category::Medium).await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO, "medium calls go on");
        assert_eq!(
            limiter.acquire(Category::Heavy).await,
            Err(LimitError::DailyBudgetSpent)
        );
        tokio::time::advance(Duration::from_secs(3601)).await;
        limiter.acquire(Category::Heavy).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_daily_budget_is_spent_not_waited_for() {
        let rates = CategoryRates {
            heavy_per_day: 2,
            ..CategoryRates::PRO
        };
        let limiter = CategoryLimiter::new(rates);
        limiter.acquire(Category::Heavy).await.unwrap();
        limiter.acquire(Category::ResourceIntensive).await.unwrap();
        assert_eq!(
            limiter.acquire(Category::Heavy).await,
            Err(LimitError::DailyBudgetSpent)
        );
        // Light and Medium calls are not capped per day.
        limiter.acquire(Category::Medium).await.unwrap();
    }
}
