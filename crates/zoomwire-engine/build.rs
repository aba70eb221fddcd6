//! Builds `csrc/wal_frames.c` (see `src/journal/vfs.rs`) against the SQLite
//! that `libsqlite3-sys` bundles.

fn main() {
    println!("cargo:rerun-if-changed=csrc/wal_frames.c");
    // Set by libsqlite3-sys (`links = "sqlite3"`) for the crates depending on it.
    let include = std::env::var("DEP_SQLITE3_INCLUDE")
        .expect("libsqlite3-sys gives its include directory (the `bundled` feature)");
    cc::Build::new()
        .file("csrc/wal_frames.c")
        .include(include)
        .warnings(true)
        .extra_warnings(true)
        .compile("zoomwire_wal_frames");
}
