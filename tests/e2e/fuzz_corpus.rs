//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! fuzz targets' checks on stable, without fuzzing: every input libFuzzer
//! kept, and every crash once fixed (`fuzz/regressions/<target>/`), must
//! still pass. The checks are `fuzz/src/lib.rs`, compiled here as a module;
//! fuzzing itself is `cargo fuzz run` (see `fuzz/README.md`). Run alone with
//! `cargo test --release --test e2e fuzz_corpus::`.

#[path = "../../fuzz/src/lib.rs"]
mod checks;

use std::path::Path;

/// Runs every file under `folder/<target>/` through its target; returns how
/// many ran.
fn replay(folder: &Path, target: &str, check: fn(&[u8])) -> usize {
    let dir = folder.join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
    files.sort();
    for file in &files {
        let data = std::fs::read(file).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{target} fails on {}", file.display());
    }
    files.len()
}

fn replay_target(target: &str) {
    let (_, check) = checks::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a known target");
    let fuzz = checks::repo_root().join("fuzz");
    let corpus = replay(&fuzz.join("corpus"), target, *check);
    let regressions = replay(&fuzz.join("regressions"), target, *check);
    eprintln!("{target}: {corpus} corpus files, {regressions} regressions");
    assert!(corpus >= 20, "{target}: only {corpus} corpus files");
}

#[test]
fn frame_decoder_corpus() {
    replay_target("frame_decoder");
}

#[test]
fn webhook_verifier_corpus() {
    replay_target("webhook_verifier");
}

#[test]
fn rule_loader_corpus() {
    replay_target("rule_loader");
}

#[test]
fn config_loader_corpus() {
    replay_target("config_loader");
}

#[test]
fn fast_conditions_corpus() {
    replay_target("fast_conditions");
}

#[test]
fn every_target_has_a_test_here() {
    let names: Vec<&str> = checks::TARGETS.iter().map(|(name, _)| *name).collect();
    let source = include_str!("fuzz_corpus.rs");
    for name in names {
        assert!(
            source.contains(&format!("fn {name}_corpus()")),
            "no replay test for {name}"
        );
    }
}
