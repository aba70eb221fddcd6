//! zoomwire's engine: a rule-based automation engine for Zoom.
//!
//! Events arrive from Zoom's WebSocket subscription (or a webhook, a cron
//! schedule, `fire` and `replay`), are matched against a compiled rule set,
//! and run each matching rule's Rhai script in a sandbox whose only way out
//! is the [`effects::Effects`] interface. See `ARCHITECTURE.md` for the map.
//! The simulator, the demo and the bench are the `zoomwire-sim` crate; the
//! command line is the `zoomwire` package.

pub mod admin;
pub mod backoff;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod duration;
pub mod effects;
pub mod engine;
pub mod event;
pub mod http_retry;
pub mod journal;
#[cfg(test)]
mod layers;
pub mod logging;
pub mod private_fs;
pub mod reconcile;
pub mod reload;
pub mod rule_tests;
pub mod rules;
pub mod schedule;
pub mod scheduler;
pub mod script;
pub mod secrets;
pub mod serve;
pub mod terminal;
pub mod zoom;
