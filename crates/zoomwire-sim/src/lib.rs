//! What zoomwire runs against when there is no Zoom: the simulator of Zoom,
//! Slack and an SMTP server ([`sim`]), and the two things built on it,
//! `zoomwire demo` ([`demo`]) and `zoomwire bench` ([`bench`]).
//!
//! A crate of its own so that the engine library neither compiles nor
//! exports them: the engine's users get the engine, the tests and the
//! `zoomwire` binary depend on this crate besides.

pub mod bench;
pub mod demo;
pub mod sim;
