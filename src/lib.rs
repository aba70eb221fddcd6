//! The `zoomwire` command line's verbs ([`commands`]), a library so that
//! `main.rs` stays thin and the end-to-end tests can call a verb directly,
//! and the starter project built into the binary ([`starter`]). The engine
//! is the `zoomwire-engine` crate; the simulator, demo and bench are
//! `zoomwire-sim`.

pub mod commands;
pub mod starter;
