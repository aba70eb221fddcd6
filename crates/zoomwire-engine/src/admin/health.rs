//! What the daemon knows about its own health, shared with the admin
//! server: each WebSocket subscription's [`ConnectionStatus`] watch (read
//! when asked, so nothing is done per event), or for other sources a state
//! the daemon sets; the rule set's status and the running set itself (for the
//! page's rules list); and the live [`Activity`] the page shows.
//!
//! `/healthz` answers 200 when every subscription is connected (or, in a
//! cluster, held by another node) and a rule set is loaded, 503 otherwise; a failed reload that left the last good
//! rule set running is `degraded` but still 200, since restarting would not
//! help.

use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::activity::Activity;
use crate::cluster::node::ClusterReport;
use crate::cluster::{NodeHealth, subscription_lease};
use crate::reconcile::ReconcileStatus;
use crate::reload::RuleSetHandle;
use crate::rules::RuleSet;
use crate::zoom::websocket::ConnectionStatus;

/// Where a subscription's connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    Connecting,
    Connected,
    /// Down, waiting to reconnect.
    Disconnected,
    /// Stopped for good (shutdown, or credentials refused).
    Stopped,
    /// Another node of the cluster holds the subscription's lease (and its
    /// WebSocket); this node takes over if that one goes.
    Standby,
}

/// What the daemon reports about one subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionHealth {
    pub state: ConnectionState,
    /// When it entered this state.
    pub since: DateTime<Utc>,
    /// Why it is not connected, if known (no secrets: a message for people).
    pub error: Option<String>,
}

impl SubscriptionHealth {
    /// This state, from now.
    pub fn new(state: ConnectionState) -> SubscriptionHealth {
        SubscriptionHealth {
            state,
            since: Utc::now(),
            error: None,
        }
    }

    pub fn with_error(mut self, error: impl Into<String>) -> SubscriptionHealth {
        self.error = Some(error.into());
        self
    }
}

/// The rule set's status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RulesHealth {
    /// Rules in the set now running; `None` until a set has loaded.
    pub loaded_rules: Option<usize>,
    pub last_reload: Option<ReloadOutcome>,
}

/// How the latest load or reload went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    pub at: DateTime<Utc>,
    pub ok: bool,
    /// Every error (`file:line:col: message`) when it failed.
    pub errors: Vec<String>,
}

/// Overall health: `ok` and `degraded` answer 200, `unhealthy` 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Ok,
    Degraded,
    Unhealthy,
}

/// One subscription in the health report.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionReport {
    pub state: ConnectionState,
    /// When it entered this state, when known.
    pub since: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub last_event_at: Option<DateTime<Utc>>,
    /// Everything the WebSocket client reports (counters, recent gaps), when watched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionStatus>,
}

impl SubscriptionReport {
    fn from_status(status: &ConnectionStatus) -> SubscriptionReport {
        let open_gap = status.gaps.last().filter(|gap| gap.end.is_none());
        let (state, since) = if status.connected {
            (ConnectionState::Connected, status.connected_since)
        } else if status.reconnects == 0 && status.gaps.is_empty() && status.last_error.is_none() {
            (ConnectionState::Connecting, None)
        } else {
            (ConnectionState::Disconnected, open_gap.map(|gap| gap.start))
        };
        SubscriptionReport {
            state,
            since,
            error: (!status.connected)
                .then(|| status.last_error.clone())
                .flatten(),
            last_event_at: status.last_event_at,
            connection: Some(status.clone()),
        }
    }
}

/// The body of `/healthz`.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    pub status: HealthStatus,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub subscriptions: BTreeMap<String, SubscriptionReport>,
    pub rules: RulesHealth,
    /// Each account's reconciliation: its last pass, events found, errors.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub reconciliation: BTreeMap<String, ReconcileStatus>,
    /// With several nodes: this node's id, the leases it holds, the nodes it sees.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterReport>,
}

/// Where a subscription's health comes from.
enum SubscriptionSlot {
    /// Set by the daemon with [`AdminState::set_subscription_status`].
    Reported {
        health: SubscriptionHealth,
        /// Milliseconds since the epoch, 0 before the first event: updated
        /// per event under the read lock.
        last_event_ms: AtomicI64,
    },
    /// Read from the WebSocket client's status channel.
    Watched(watch::Receiver<ConnectionStatus>),
}

impl SubscriptionSlot {
    fn report(&self) -> SubscriptionReport {
        match self {
            SubscriptionSlot::Watched(status) => SubscriptionReport::from_status(&status.borrow()),
            SubscriptionSlot::Reported {
                health,
                last_event_ms,
            } => {
                let millis = last_event_ms.load(Ordering::Relaxed);
                SubscriptionReport {
                    state: health.state,
                    since: Some(health.since),
                    error: health.error.clone(),
                    last_event_at: (millis > 0)
                        .then(|| Utc.timestamp_millis_opt(millis).single())
                        .flatten(),
                    connection: None,
                }
            }
        }
    }
}

/// What the daemon knows about its own health, shared with the admin server.
pub struct AdminState {
    started_at: DateTime<Utc>,
    subscriptions: RwLock<BTreeMap<String, SubscriptionSlot>>,
    rules: RwLock<RulesHealth>,
    /// The running rule set, once the daemon shows it.
    rule_set: OnceLock<Arc<RuleSetHandle>>,
    activity: Arc<Activity>,
    reconciliation: RwLock<BTreeMap<String, watch::Receiver<ReconcileStatus>>>,
    cluster: OnceLock<NodeHealth>,
}

impl Default for AdminState {
    fn default() -> Self {
        AdminState {
            started_at: Utc::now(),
            subscriptions: RwLock::new(BTreeMap::new()),
            rules: RwLock::new(RulesHealth::default()),
            rule_set: OnceLock::new(),
            activity: Arc::new(Activity::default()),
            reconciliation: RwLock::new(BTreeMap::new()),
            cluster: OnceLock::new(),
        }
    }
}

impl AdminState {
    pub fn new() -> Arc<AdminState> {
        Arc::new(AdminState::default())
    }

    /// When the process started.
    pub fn started_at(&self) -> DateTime<Utc> {
        self.started_at
    }

    /// The live feed of events and runs (fed by an `ObservedJournal`).
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// Shows the running rule set (and its reloads) on the page; set once.
    pub fn show_rules(&self, rules: Arc<RuleSetHandle>) {
        let _ = self.rule_set.set(rules);
    }

    /// The rule set running now, when the daemon showed it.
    pub fn rule_set(&self) -> Option<Arc<RuleSet>> {
        self.rule_set.get().map(|handle| handle.current())
    }

    /// Reports a WebSocket subscription from the status channel its client
    /// (`run_subscription`) updates; replaces anything reported for `name`.
    pub fn watch_subscription(&self, name: &str, status: watch::Receiver<ConnectionStatus>) {
        self.subscriptions
            .write()
            .insert(name.to_string(), SubscriptionSlot::Watched(status));
    }

    /// Shows this node's place in the cluster; set once. A subscription
    /// whose lease another node holds is then `standby`, not down.
    pub fn show_cluster(&self, health: NodeHealth) {
        let _ = self.cluster.set(health);
    }

    /// Reports an account's reconciliation from the status its reconciler updates.
    pub fn watch_reconciliation(&self, account: &str, status: watch::Receiver<ReconcileStatus>) {
        self.reconciliation
            .write()
            .insert(account.to_string(), status);
    }

    /// Records a subscription's state by hand (adding it if new), for
    /// sources without a status channel.
    pub fn set_subscription_status(&self, name: &str, health: SubscriptionHealth) {
        let mut subscriptions = self.subscriptions.write();
        if let Some(SubscriptionSlot::Reported {
            health: current, ..
        }) = subscriptions.get_mut(name)
        {
            *current = health;
            return;
        }
        let slot = SubscriptionSlot::Reported {
            health,
            last_event_ms: AtomicI64::new(0),
        };
        subscriptions.insert(name.to_string(), slot);
    }

    /// Records that a hand-reported subscription delivered an event at `at`.
    /// Cheap: call it per event. (Watched subscriptions report their own.)
    pub fn note_event(&self, subscription: &str, at: DateTime<Utc>) {
        let subscriptions = self.subscriptions.read();
        if let Some(SubscriptionSlot::Reported { last_event_ms, .. }) =
            subscriptions.get(subscription)
        {
            last_event_ms.fetch_max(at.timestamp_millis(), Ordering::Relaxed);
        }
    }

    pub fn set_rules_status(&self, health: RulesHealth) {
        *self.rules.write() = health;
    }

    /// A rule set of `count` rules loaded (at start or on reload).
    pub fn rules_loaded(&self, count: usize) {
        self.set_rules_status(RulesHealth {
            loaded_rules: Some(count),
            last_reload: Some(ReloadOutcome {
                at: Utc::now(),
                ok: true,
                errors: Vec::new(),
            }),
        });
    }

    /// A load failed with these errors; the set already running (if any) stays.
    pub fn rules_reload_failed(&self, errors: Vec<String>) {
        let mut rules = self.rules.write();
        rules.last_reload = Some(ReloadOutcome {
            at: Utc::now(),
            ok: false,
            errors,
        });
    }

    /// The health report `/healthz` serves.
    pub fn report(&self) -> HealthReport {
        let cluster = self.cluster.get();
        let subscriptions: BTreeMap<String, SubscriptionReport> = self
            .subscriptions
            .read()
            .iter()
            .map(|(name, slot)| {
                let mut report = slot.report();
                if cluster.is_some_and(|c| !c.holds(&subscription_lease(name))) {
                    report.state = ConnectionState::Standby;
                }
                (name.clone(), report)
            })
            .collect();
        let rules = self.rules.read().clone();
        let reconciliation = self
            .reconciliation
            .read()
            .iter()
            .map(|(account, status)| (account.clone(), status.borrow().clone()))
            .collect();
        HealthReport {
            status: overall_status(&subscriptions, &rules),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: self.started_at,
            subscriptions,
            rules,
            reconciliation,
            cluster: cluster.map(NodeHealth::report),
        }
    }
}

fn overall_status(
    subscriptions: &BTreeMap<String, SubscriptionReport>,
    rules: &RulesHealth,
) -> HealthStatus {
    let all_connected = subscriptions.values().all(|s| {
        matches!(
            s.state,
            ConnectionState::Connected | ConnectionState::Standby
        )
    });
    if !all_connected || rules.loaded_rules.is_none() {
        HealthStatus::Unhealthy
    } else if rules.last_reload.as_ref().is_some_and(|r| !r.ok) {
        HealthStatus::Degraded
    } else {
        HealthStatus::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connected() -> SubscriptionHealth {
        SubscriptionHealth::new(ConnectionState::Connected)
    }

    #[test]
    fn unhealthy_until_rules_load_and_every_subscription_connects() {
        let state = AdminState::default();
        assert_eq!(state.report().status, HealthStatus::Unhealthy);
        state.rules_loaded(2);
        assert_eq!(
            state.report().status,
            HealthStatus::Ok,
            "no subscription (webhook only) is fine"
        );
        state.set_subscription_status(
            "default",
            SubscriptionHealth::new(ConnectionState::Connecting),
        );
        state.set_subscription_status("sales", connected());
        assert_eq!(state.report().status, HealthStatus::Unhealthy);
        state.set_subscription_status("default", connected());
        assert_eq!(state.report().status, HealthStatus::Ok);
    }

    #[test]
    fn a_failed_reload_degrades_but_keeps_the_count() {
        let state = AdminState::default();
        state.rules_loaded(3);
        state.rules_reload_failed(vec!["rules/a.yaml:1:1: bad".into()]);
        let report = state.report();
        assert_eq!(report.status, HealthStatus::Degraded);
        assert_eq!(report.rules.loaded_rules, Some(3));
        let reload = report.rules.last_reload.unwrap();
        assert!(!reload.ok);
        assert_eq!(reload.errors, vec!["rules/a.yaml:1:1: bad"]);
        // A failure before any set loaded leaves the engine without rules.
        let fresh = AdminState::default();
        fresh.rules_reload_failed(vec!["x".into()]);
        assert_eq!(fresh.report().status, HealthStatus::Unhealthy);
    }

    #[test]
    fn notes_the_latest_event_per_subscription() {
        let state = AdminState::default();
        state.note_event("unknown", Utc::now());
        assert!(state.report().subscriptions.is_empty());
        state.set_subscription_status("default", connected());
        assert_eq!(state.report().subscriptions["default"].last_event_at, None);
        let later = Utc.timestamp_millis_opt(1_732_030_000_500).unwrap();
        let earlier = Utc.timestamp_millis_opt(1_732_030_000_000).unwrap();
        state.note_event("default", later);
        state.note_event("default", earlier);
        state.set_subscription_status("default", connected());
        assert_eq!(
            state.report().subscriptions["default"].last_event_at,
            Some(later)
        );
    }
}
