//! Holding one lease, and doing its work only while it is held.
//!
//! [`hold_lease`] tries for the lease every `retry_every`. Once it holds
//! it, it starts the work with a cancellation token of its own and renews
//! every `renew_every`. It stops the work (cancels the token, then waits
//! for the work to end) as soon as it can no longer be sure it holds the
//! lease: when the store says another node holds it, or when renewals have
//! failed until `margin` before the lease could expire. That deadline is
//! kept on this process's monotonic clock from the moment the last
//! successful renewal was *sent*, which is never after the server started
//! the lease's new term, so the holder stops before the server could give
//! the lease to anyone else. A process stopped (SIGSTOP) past its lease
//! stops the work first thing when it wakes. On shutdown the work stops
//! first and the lease is freed after, so the next holder starts within
//! `retry_every` and never overlaps.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;

use tokio::time::{Instant, sleep, sleep_until, timeout_at};
use tokio_util::sync::CancellationToken;

use super::{ClusterStore, ClusterTimings, NodeIdentity};

/// The leases this node holds now, by name, with their epochs.
#[derive(Debug, Clone, Default)]
pub struct HeldLeases(Arc<Mutex<BTreeMap<String, i64>>>);

impl HeldLeases {
    pub fn snapshot(&self) -> BTreeMap<String, i64> {
        self.lock().clone()
    }

    fn set(&self, name: &str, epoch: Option<i64>) {
        let mut held = self.lock();
        match epoch {
            Some(epoch) => held.insert(name.to_string(), epoch),
            None => held.remove(name),
        };
        metrics::gauge!("zoomwire_lease_held", "lease" => name.to_string())
            .set(if epoch.is_some() { 1.0 } else { 0.0 });
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, BTreeMap<String, i64>> {
        self.0.lock()
    }
}

/// What one lease needs.
#[derive(Clone)]
pub struct LeaseKeeper {
    pub store: Arc<dyn ClusterStore>,
    pub node: NodeIdentity,
    pub name: String,
    pub timings: ClusterTimings,
    pub held: HeldLeases,
}

/// Why a term of holding ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The daemon stops: free the lease.
    Shutdown,
    /// The work ended by itself: free the lease.
    WorkEnded,
    /// Another node holds it now.
    Lost,
    /// No renewal succeeded in time: stop before it could expire.
    Fenced,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::Shutdown => "released",
            End::WorkEnded => "released",
            End::Lost => "lost",
            End::Fenced => "fenced",
        }
    }
}

/// Holds the lease and runs `work(token, epoch)` during each term of
/// holding it, until `shutdown`. See the module documentation.
pub async fn hold_lease<W, Fut>(keeper: LeaseKeeper, shutdown: CancellationToken, mut work: W)
where
    W: FnMut(CancellationToken, i64) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let Some((epoch, deadline)) = acquire(&keeper, &shutdown).await else {
            return;
        };
        keeper.held.set(&keeper.name, Some(epoch));
        count(&keeper.name, "acquired");
        tracing::info!(lease = %keeper.name, epoch, node = %keeper.node.id, "lease acquired");
        let token = shutdown.child_token();
        let mut running = tokio::spawn(work(token.clone(), epoch));
        let end = keep(&keeper, epoch, deadline, &shutdown, &mut running).await;
        token.cancel();
        if end != End::WorkEnded {
            let _ = running.await;
        }
        keeper.held.set(&keeper.name, None);
        count(&keeper.name, end.as_str());
        match end {
            End::Shutdown | End::WorkEnded => {
                if let Err(error) = keeper
                    .store
                    .release(&keeper.name, &keeper.node, epoch)
                    .await
                {
                    tracing::warn!(lease = %keeper.name, error = %error, "cannot free the lease: it expires by itself");
                }
                tracing::info!(lease = %keeper.name, epoch, "lease released");
                return;
            }
            End::Lost | End::Fenced => {
                tracing::warn!(lease = %keeper.name, epoch, reason = end.as_str(), "lease lost: its work is stopped");
            }
        }
    }
}

/// Tries until the lease is held (its epoch and the deadline to stop by)
/// or the daemon stops.
async fn acquire(keeper: &LeaseKeeper, shutdown: &CancellationToken) -> Option<(i64, Instant)> {
    let timings = &keeper.timings;
    let mut failing = false;
    loop {
        if shutdown.is_cancelled() {
            return None;
        }
        let sent = Instant::now();
        let answer = timeout_at(
            sent + timings.renew_every,
            keeper
                .store
                .acquire(&keeper.name, &keeper.node, timings.lease_ttl),
        )
        .await;
        match answer {
            Ok(Ok(Some(epoch))) => return Some((epoch, stop_by(timings, sent))),
            Ok(Ok(None)) => failing = false,
            Ok(Err(error)) => {
                if !failing {
                    tracing::warn!(lease = %keeper.name, error = %error, "cannot try for the lease");
                }
                failing = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = sleep(timings.retry_every) => {}
            _ = shutdown.cancelled() => return None,
        }
    }
}

/// Renews the lease while the work runs; answers why the term ended.
async fn keep(
    keeper: &LeaseKeeper,
    epoch: i64,
    mut deadline: Instant,
    shutdown: &CancellationToken,
    running: &mut tokio::task::JoinHandle<()>,
) -> End {
    let timings = &keeper.timings;
    let mut next_renewal = Instant::now() + timings.renew_every;
    loop {
        tokio::select! {
            biased;
            _ = sleep_until(deadline) => return End::Fenced,
            _ = shutdown.cancelled() => return End::Shutdown,
            _ = &mut *running => return End::WorkEnded,
            _ = sleep_until(next_renewal) => {}
        }
        if Instant::now() >= deadline {
            return End::Fenced;
        }
        let sent = Instant::now();
        let renewed = timeout_at(
            deadline,
            keeper
                .store
                .acquire(&keeper.name, &keeper.node, timings.lease_ttl),
        )
        .await;
        match renewed {
            Ok(Ok(Some(renewed))) if renewed == epoch => {
                deadline = stop_by(timings, sent);
                next_renewal = Instant::now() + timings.renew_every;
            }
            Ok(Ok(_)) => return End::Lost,
            Ok(Err(error)) => {
                tracing::warn!(lease = %keeper.name, error = %error, "cannot renew the lease");
                next_renewal = Instant::now() + timings.retry_every;
            }
            Err(_) => return End::Fenced,
        }
    }
}

/// The time to stop by after a renewal sent at `sent`.
fn stop_by(timings: &ClusterTimings, sent: Instant) -> Instant {
    sent + timings.lease_ttl.saturating_sub(timings.margin)
}

fn count(lease: &str, change: &'static str) {
    metrics::counter!("zoomwire_lease_changes_total", "lease" => lease.to_string(), "change" => change)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{ClusterError, LeaseInfo, PeerInfo};
    use crate::effects::BoxFuture;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    /// A lease store on tokio's (paused) clock: one lease, as the server
    /// would keep it, and a switch that makes it stop answering.
    #[derive(Default)]
    struct ClockStore {
        lease: Mutex<Option<(String, i64, Instant)>>,
        silent: AtomicBool,
        released: AtomicUsize,
    }

    impl ClockStore {
        fn holder(&self) -> Option<String> {
            let lease = self.lease.lock();
            lease
                .as_ref()
                .filter(|(_, _, expires)| *expires > Instant::now())
                .map(|(holder, _, _)| holder.clone())
        }
    }

    impl ClusterStore for ClockStore {
        fn register<'a>(
            &'a self,
            _: &'a NodeIdentity,
            _: Option<String>,
        ) -> BoxFuture<'a, Result<bool, ClusterError>> {
            Box::pin(async { Ok(false) })
        }
        fn heartbeat<'a>(
            &'a self,
            _: &'a NodeIdentity,
        ) -> BoxFuture<'a, Result<bool, ClusterError>> {
            Box::pin(async { Ok(true) })
        }
        fn deregister<'a>(
            &'a self,
            _: &'a NodeIdentity,
        ) -> BoxFuture<'a, Result<(), ClusterError>> {
            Box::pin(async { Ok(()) })
        }
        fn acquire<'a>(
            &'a self,
            _: &'a str,
            node: &'a NodeIdentity,
            ttl: Duration,
        ) -> BoxFuture<'a, Result<Option<i64>, ClusterError>> {
            Box::pin(async move {
                if self.silent.load(Ordering::SeqCst) {
                    return std::future::pending().await;
                }
                let now = Instant::now();
                let mut lease = self.lease.lock();
                let answer = match lease.as_mut() {
                    Some((holder, epoch, expires)) if *holder == node.incarnation => {
                        *expires = now + ttl;
                        Some(*epoch)
                    }
                    Some((holder, epoch, expires)) if *expires <= now => {
                        *holder = node.incarnation.clone();
                        *epoch += 1;
                        *expires = now + ttl;
                        Some(*epoch)
                    }
                    Some(_) => None,
                    None => {
                        *lease = Some((node.incarnation.clone(), 1, now + ttl));
                        Some(1)
                    }
                };
                Ok(answer)
            })
        }
        fn release<'a>(
            &'a self,
            _: &'a str,
            node: &'a NodeIdentity,
            epoch: i64,
        ) -> BoxFuture<'a, Result<(), ClusterError>> {
            Box::pin(async move {
                let mut lease = self.lease.lock();
                if let Some((holder, held, expires)) = lease.as_mut()
                    && *holder == node.incarnation
                    && *held == epoch
                {
                    *expires = Instant::now();
                    self.released.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            })
        }
        fn leases(&self) -> BoxFuture<'_, Result<Vec<LeaseInfo>, ClusterError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn nodes(&self, _: Duration) -> BoxFuture<'_, Result<Vec<PeerInfo>, ClusterError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
    }

    /// Work that counts how many terms of it run now.
    fn working(
        counter: Arc<AtomicUsize>,
    ) -> impl FnMut(CancellationToken, i64) -> BoxFuture<'static, ()> {
        move |token, _epoch| {
            let counter = counter.clone();
            Box::pin(async move {
                counter.fetch_add(1, Ordering::SeqCst);
                token.cancelled().await;
                counter.fetch_sub(1, Ordering::SeqCst);
            })
        }
    }

    fn keeper(store: &Arc<ClockStore>, node: &str) -> LeaseKeeper {
        LeaseKeeper {
            store: store.clone(),
            node: NodeIdentity::new(node),
            name: "subscription:default".into(),
            timings: ClusterTimings::from_ttl(Duration::from_secs(8)),
            held: HeldLeases::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_holder_works_and_a_clean_stop_hands_over_within_the_retry() {
        let store = Arc::new(ClockStore::default());
        let (first, second) = (keeper(&store, "a"), keeper(&store, "b"));
        let (stop_first, stop_second) = (CancellationToken::new(), CancellationToken::new());
        let (work_first, work_second) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let a = tokio::spawn(hold_lease(
            first.clone(),
            stop_first.clone(),
            working(work_first.clone()),
        ));
        sleep(Duration::from_millis(100)).await;
        let b = tokio::spawn(hold_lease(
            second.clone(),
            stop_second.clone(),
            working(work_second.clone()),
        ));
        // Long past several renewals: still one holder, the first.
        sleep(Duration::from_secs(60)).await;
        assert_eq!(
            (
                work_first.load(Ordering::SeqCst),
                work_second.load(Ordering::SeqCst)
            ),
            (1, 0)
        );
        assert_eq!(first.held.snapshot().get("subscription:default"), Some(&1));
        stop_first.cancel();
        a.await.unwrap();
        assert_eq!(
            work_first.load(Ordering::SeqCst),
            0,
            "the work stopped before the release"
        );
        assert_eq!(store.released.load(Ordering::SeqCst), 1);
        sleep(first.timings.retry_every + Duration::from_millis(1)).await;
        assert_eq!(
            work_second.load(Ordering::SeqCst),
            1,
            "handed over within one retry"
        );
        assert_eq!(
            second.held.snapshot().get("subscription:default"),
            Some(&2),
            "a new epoch"
        );
        stop_second.cancel();
        b.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_that_cannot_renew_stops_its_work_before_the_lease_could_expire() {
        let store = Arc::new(ClockStore::default());
        let first = keeper(&store, "a");
        let stop = CancellationToken::new();
        let work = Arc::new(AtomicUsize::new(0));
        let acquired_at = Instant::now();
        tokio::spawn(hold_lease(
            first.clone(),
            stop.clone(),
            working(work.clone()),
        ));
        sleep(Duration::from_millis(10)).await;
        assert_eq!(work.load(Ordering::SeqCst), 1);
        store.silent.store(true, Ordering::SeqCst);
        // The last renewal before the store went silent was sent at most
        // `renew_every` after the start; the lease lasts `ttl` from then.
        let mut stopped_at = None;
        for _ in 0..200 {
            sleep(Duration::from_millis(50)).await;
            if work.load(Ordering::SeqCst) == 0 {
                stopped_at = Some(Instant::now());
                break;
            }
        }
        let stopped_at = stopped_at.expect("the work stopped");
        let expires = store.lease.lock().as_ref().unwrap().2;
        assert!(
            stopped_at + first.timings.margin / 2 <= expires,
            "stopped {:?} after the start, the lease expires {:?} after it",
            stopped_at - acquired_at,
            expires - acquired_at
        );
        assert!(first.held.snapshot().is_empty());
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_told_another_node_holds_the_lease_stops_at_once() {
        let store = Arc::new(ClockStore::default());
        let first = keeper(&store, "a");
        let stop = CancellationToken::new();
        let work = Arc::new(AtomicUsize::new(0));
        tokio::spawn(hold_lease(
            first.clone(),
            stop.clone(),
            working(work.clone()),
        ));
        sleep(Duration::from_millis(10)).await;
        // Another incarnation took the lease (say the server expired it while this one slept).
        *store.lease.lock() = Some((
            "someone-else".into(),
            7,
            Instant::now() + Duration::from_secs(60),
        ));
        sleep(first.timings.renew_every + Duration::from_millis(10)).await;
        assert_eq!(work.load(Ordering::SeqCst), 0);
        assert_eq!(store.holder().as_deref(), Some("someone-else"));
        stop.cancel();
    }
}
