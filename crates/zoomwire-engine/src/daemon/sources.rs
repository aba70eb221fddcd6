//! Each account's sources: its WebSocket subscription and its reconciler,
//! built once and run as one unit, so that a node in a cluster runs both
//! only while it holds the account's lease (and a single node always).
//!
//! The reconciler watches the subscription's status to find the gaps it
//! must cover; its marks (how far the account was watched) live in the
//! shared state store, so a node that takes an account over reconciles the
//! time since the previous holder last watched it.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::ReconcileWiring;
use crate::admin::AdminState;
use crate::config::Settings;
use crate::event::Event;
use crate::reconcile::{EventFeed, ReconcileConfig, ReconcileStatus, Reconciler, ReconcilerParts};
use crate::zoom::missed::MissedFinder;
use crate::zoom::token::AccessTokens;
use crate::zoom::websocket::{ConnectionStatus, WsConfig, run_subscription};

/// One account's subscription (when it has one) and reconciler (when
/// reconciliation is on), ready to run any number of times.
#[derive(Clone)]
pub(super) struct AccountSources {
    pub name: String,
    subscription: Option<Subscription>,
    reconciler: Option<Reconciling>,
    events: mpsc::Sender<Event>,
}

#[derive(Clone)]
struct Subscription {
    config: WsConfig,
    tokens: Arc<dyn AccessTokens>,
    status: watch::Sender<ConnectionStatus>,
}

#[derive(Clone)]
struct Reconciling {
    config: ReconcileConfig,
    parts: ReconcilerParts,
    status: watch::Sender<ReconcileStatus>,
}

impl AccountSources {
    /// Runs the subscription and the reconciler until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let connection = self.subscription.as_ref().map(|s| s.status.subscribe());
        let subscription = async {
            if let Some(subscription) = self.subscription.clone() {
                run_subscription(
                    subscription.config,
                    subscription.tokens,
                    self.events.clone(),
                    subscription.status,
                    shutdown.clone(),
                )
                .await;
            }
        };
        let reconciliation = async {
            if let Some(reconciling) = self.reconciler.clone() {
                Reconciler::new(
                    &self.name,
                    reconciling.config,
                    reconciling.parts,
                    reconciling.status,
                )
                .run(connection, shutdown.clone())
                .await;
            }
        };
        tokio::join!(subscription, reconciliation);
    }

    /// Whether there is anything to run.
    pub fn is_empty(&self) -> bool {
        self.subscription.is_none() && self.reconciler.is_none()
    }
}

/// Builds every account's sources, and shows their status on the admin server.
pub(super) fn account_sources(
    settings: &Settings,
    tokens: &[(String, Arc<dyn AccessTokens>)],
    wiring: &ReconcileWiring,
    admin: &Arc<AdminState>,
) -> Vec<AccountSources> {
    let api_base = settings.live_config().zoom_api_base;
    let feed: Arc<dyn EventFeed> = Arc::new(wiring.events.clone());
    let mut all = Vec::new();
    for account in &settings.accounts {
        let Some((_, account_tokens)) = tokens.iter().find(|(name, _)| *name == account.name)
        else {
            continue;
        };
        let subscription = settings.websocket_config(account).map(|config| {
            let (status, watching) = watch::channel(ConnectionStatus {
                name: account.name.clone(),
                ..ConnectionStatus::default()
            });
            admin.watch_subscription(&account.name, watching);
            Subscription {
                config,
                tokens: account_tokens.clone(),
                status,
            }
        });
        let reconciler = if settings.reconcile.enabled {
            match MissedFinder::connect(
                api_base.clone(),
                account_tokens.clone(),
                &account.account_id,
            ) {
                Ok(finder) => {
                    let (status, watching) = watch::channel(ReconcileStatus::new(&account.name));
                    admin.watch_reconciliation(&account.name, watching);
                    Some(Reconciling {
                        config: settings.reconcile_config(),
                        parts: ReconcilerParts {
                            source: Arc::new(finder),
                            known: wiring.known.clone(),
                            feed: feed.clone(),
                            rules: wiring.rules.clone(),
                            state: wiring.state.clone(),
                        },
                        status,
                    })
                }
                Err(error) => {
                    tracing::error!(account = %account.name, error = %error, "cannot start reconciliation");
                    None
                }
            }
        } else {
            None
        };
        all.push(AccountSources {
            name: account.name.clone(),
            subscription,
            reconciler,
            events: wiring.events.clone(),
        });
    }
    all
}
