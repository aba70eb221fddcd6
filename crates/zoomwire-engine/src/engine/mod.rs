//! The engine: matching events to rules and running them under each rule's
//! mode, timeout and retry policy.

pub mod admission;
pub mod attempt;
pub mod executor;
mod held;
pub mod journal;
pub mod matcher;
