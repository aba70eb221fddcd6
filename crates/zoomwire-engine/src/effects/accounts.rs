//! Which Zoom account a run's Zoom calls use: each configured account has
//! its own token cache (shared with its WebSocket subscription), REST client
//! and rate limiter, and a call never falls back to another account's token.
//!
//! The account comes, in order, from the call (`zoom::get(path, #{account:
//! "sales"})`), the rule (`account: sales`), or the event: the subscription
//! it came through (or the account reconciliation found it in), else its
//! `payload.account_id` (a webhook) matched against the configured Zoom
//! account ids. A run that names no account uses the only account when just
//! one is configured. Anything else (an unknown name, an event from an
//! account that is not configured, several accounts and nothing to choose
//! by) fails the call with a permanent error that says what to fix.

use std::fmt;
use std::sync::Arc;

use super::{EffectError, ZoomAccountRef};
use crate::zoom::rest::ZoomRest;
use crate::zoom::token::AccessTokens;

/// One configured Zoom account, as the daemon hands it over.
#[derive(Clone)]
pub struct ZoomAccountClient {
    /// The account's name in the configuration (`default` for the environment's).
    pub name: String,
    /// Zoom's account id (`payload.account_id` of its events).
    pub account_id: String,
    /// The account's one token cache.
    pub tokens: Arc<dyn AccessTokens>,
}

impl ZoomAccountClient {
    /// The only account, for tools and tests that configure one.
    pub fn only(tokens: Arc<dyn AccessTokens>) -> ZoomAccountClient {
        ZoomAccountClient {
            name: "default".into(),
            account_id: String::new(),
            tokens,
        }
    }
}

impl fmt::Debug for ZoomAccountClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZoomAccountClient")
            .field("name", &self.name)
            .field("account_id", &self.account_id)
            .finish_non_exhaustive()
    }
}

/// An account with its REST client.
pub struct AccountEntry {
    pub name: String,
    pub account_id: String,
    pub tokens: Arc<dyn AccessTokens>,
    pub rest: ZoomRest,
}

/// Every configured account, looked up by name or Zoom account id.
pub struct ZoomAccounts {
    entries: Vec<AccountEntry>,
}

impl ZoomAccounts {
    pub fn new(entries: Vec<AccountEntry>) -> ZoomAccounts {
        ZoomAccounts { entries }
    }

    /// The account a call uses: the one it names, else the run's.
    pub fn pick(
        &self,
        effect: &str,
        requested: Option<&str>,
        run_account: &ZoomAccountRef,
    ) -> Result<&AccountEntry, EffectError> {
        if let Some(name) = requested {
            return self.by_name(name).ok_or_else(|| {
                EffectError::permanent(
                    effect,
                    format!(
                        "no zoom account is named `{name}` (configured: {})",
                        self.names()
                    ),
                )
            });
        }
        match run_account {
            ZoomAccountRef::Named(name) => self.by_name(name).ok_or_else(|| {
                EffectError::permanent(
                    effect,
                    format!(
                        "the rule names zoom account `{name}`, which is not configured (configured: {})",
                        self.names()
                    ),
                )
            }),
            ZoomAccountRef::ZoomId(id) => self
                .entries
                .iter()
                .find(|entry| entry.account_id == **id)
                .ok_or_else(|| {
                    EffectError::permanent(
                        effect,
                        format!(
                            "the event came from zoom account `{id}`, which is not configured; \
                             its zoom calls never use another account's token"
                        ),
                    )
                }),
            ZoomAccountRef::Unspecified => match self.entries.as_slice() {
                [only] => Ok(only),
                [] => Err(EffectError::permanent(
                    effect,
                    "no zoom account is configured: set ZOOM_ACCOUNT_ID, ZOOM_CLIENT_ID and ZOOM_CLIENT_SECRET",
                )),
                _ => Err(EffectError::permanent(
                    effect,
                    format!(
                        "this run does not say which zoom account to use (configured: {}): \
                         add `account:` to the rule or pass #{{account: \"name\"}} to the call",
                        self.names()
                    ),
                )),
            },
        }
    }

    fn by_name(&self, name: &str) -> Option<&AccountEntry> {
        self.entries.iter().find(|entry| entry.name == name)
    }

    fn names(&self) -> String {
        if self.entries.is_empty() {
            return "none".into();
        }
        self.entries
            .iter()
            .map(|entry| entry.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zoom::rest::RestConfig;
    use crate::zoom::token::{AccessToken, StaticToken};

    fn accounts(names: &[(&str, &str)]) -> ZoomAccounts {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let base = url::Url::parse("http://127.0.0.1:9/v2").unwrap();
        ZoomAccounts::new(
            names
                .iter()
                .map(|(name, id)| {
                    let tokens: Arc<dyn AccessTokens> =
                        Arc::new(StaticToken(AccessToken::new(*name)));
                    AccountEntry {
                        name: name.to_string(),
                        account_id: id.to_string(),
                        rest: ZoomRest::new(
                            reqwest::Client::new(),
                            RestConfig::new(base.clone()),
                            tokens.clone(),
                        ),
                        tokens,
                    }
                })
                .collect(),
        )
    }

    fn named(name: &str) -> ZoomAccountRef {
        ZoomAccountRef::Named(Arc::from(name))
    }

    fn zoom_id(id: &str) -> ZoomAccountRef {
        ZoomAccountRef::ZoomId(Arc::from(id))
    }

    #[test]
    fn the_call_then_the_run_decides_and_nothing_falls_back() {
        let two = accounts(&[("default", "acc-a"), ("sales", "acc-s")]);
        let pick = |requested: Option<&str>, run: ZoomAccountRef| {
            two.pick("zoom.get", requested, &run)
                .map(|entry| entry.name.clone())
                .map_err(|error| error.message)
        };
        assert_eq!(pick(None, named("sales")).unwrap(), "sales");
        assert_eq!(pick(None, zoom_id("acc-s")).unwrap(), "sales");
        assert_eq!(pick(Some("default"), zoom_id("acc-s")).unwrap(), "default");
        assert_eq!(
            pick(None, zoom_id("acc-other")).unwrap_err(),
            "the event came from zoom account `acc-other`, which is not configured; \
             its zoom calls never use another account's token"
        );
        assert_eq!(
            pick(Some("marketing"), named("sales")).unwrap_err(),
            "no zoom account is named `marketing` (configured: default, sales)"
        );
        assert!(
            pick(None, ZoomAccountRef::Unspecified)
                .unwrap_err()
                .starts_with(
                    "this run does not say which zoom account to use (configured: default, sales)"
                )
        );
        let one = accounts(&[("default", "acc-a")]);
        let only = one
            .pick("zoom.get", None, &ZoomAccountRef::Unspecified)
            .unwrap();
        assert_eq!(only.name, "default");
        assert!(
            one.pick("zoom.get", None, &zoom_id("acc-b")).is_err(),
            "no fallback to the only account"
        );
        let none = accounts(&[]);
        let error = none
            .pick("zoom.get", None, &ZoomAccountRef::Unspecified)
            .err()
            .unwrap();
        assert_eq!(error.kind, crate::effects::EffectErrorKind::Permanent);
    }
}
