//! The shared PostgreSQL journal and the cluster on a real PostgreSQL
//! server (started once per test binary on loopback, see `support/postgres.rs`):
//! the journal's behaviour on both stores (`stores.rs`, `journal.rs`),
//! what only the shared journal does (`shared.rs`: nodes, claims, leases,
//! migrations, TLS), and real `zoomwire run` daemons sharing one database
//! (`daemons.rs`).

mod daemons;
mod journal;
mod shared;
mod stores;
