//! The `zoomwire` command line's verbs ([`commands`]), a library so that
//! `main.rs` stays thin and the end-to-end tests can call a verb directly.
//! The engine is the `zoomwire-engine` crate; the simulator, demo and bench
//! are `zoomwire-sim`.

pub mod commands;
