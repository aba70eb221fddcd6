//! zoomwire's end-to-end tests, one module per area, in one test binary so
//! that the release build links them once, not once per file. Each
//! module drives real parts over loopback: the simulator hosted in this
//! process, the `zoomwire` binary as a child process, real SQLite files, a
//! real SMTP server, a real browser. Shared helpers are in [`support`].
//!
//! Run one area with `cargo test --release --test e2e journal::`. Three
//! test files are binaries of their own because they need the whole
//! process: `tests/actions_download_memory.rs` (its peak memory),
//! `tests/logging.rs` (installing the process-wide logger) and
//! `tests/websocket.rs` (it captures the process-wide logger's output to
//! check that no token reaches a log line).

mod support;

mod actions_download;
mod actions_email;
mod actions_http;
mod actions_slack;
mod actions_zoom;
mod admin;
mod admin_page;
mod bench;
mod browser;
mod cli;
mod crash_recovery;
mod crash_torture;
mod daemon;
mod demo;
mod executor;
mod fuzz_corpus;
mod history;
mod journal;
mod postgres;
mod reconcile;
mod reload;
mod rule_files;
mod sandbox;
mod sandbox_memory;
mod schedule;
mod secrets;
mod sim;
mod webhook;
mod webhook_abuse;

/// Every file in this folder is a module above: a file added without its
/// `mod` line would compile nowhere, and its tests would never run.
#[test]
fn every_test_file_is_a_module_of_this_binary() {
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
    let main = std::fs::read_to_string(folder.join("main.rs")).expect("main.rs");
    let declared: Vec<&str> = main
        .lines()
        .filter_map(|line| line.strip_prefix("mod ")?.strip_suffix(';'))
        .collect();
    for entry in std::fs::read_dir(&folder).expect("tests/e2e") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            assert!(
                name == "main" || declared.contains(&name.as_str()),
                "tests/e2e/{name}.rs is not declared in tests/e2e/main.rs"
            );
        }
    }
}
