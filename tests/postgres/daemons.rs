//! Real `zoomwire run` daemons sharing one PostgreSQL database, against the
//! simulator.
