//! The shared PostgreSQL journal and the cluster on a real PostgreSQL
//! server (started once per test binary on loopback, see `support/postgres.rs`):
//! the journal's behaviour on both stores (`stores.rs`, `journal.rs`),
//! what only the shared journal does (`shared.rs`: nodes, claims, leases,
//! migrations, TLS), real `zoomwire run` daemons sharing one database
//! (`daemons.rs`), and `zoomwire bench --nodes` (`bench.rs`).

mod bench;
mod daemons;
mod journal;
mod shared;
mod stores;
