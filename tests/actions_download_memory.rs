//! Memory stays flat while `zoom.download` streams a large recording: 1 GiB
//! from the simulator (in this process, generated on the fly) into the
//! archive, with the process's peak resident memory (`VmHWM`) under
//! 100 MiB. This file holds only this test so that nothing else shares the
//! process and its peak.

#[path = "e2e/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{context, live, live_config, oauth, perform, start_sim_tls};

const SIZE: u64 = 1 << 30;
const PEAK_LIMIT_KIB: u64 = 100 * 1024;

/// A `/proc/self/status` field in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Compares a few 64 KiB windows of the file with the simulator's pattern.
fn spot_check(path: &std::path::Path) {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).unwrap();
    for offset in [0, SIZE / 3, SIZE / 2 + 12345, SIZE - 65536] {
        let mut window = vec![0u8; 65536];
        file.seek(SeekFrom::Start(offset)).unwrap();
        file.read_exact(&mut window).unwrap();
        for (i, byte) in window.iter().enumerate() {
            let at = offset + i as u64;
            assert_eq!(
                *byte,
                zoomwire_sim::sim::download::download_byte(at),
                "offset {at}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_gibibyte_with_flat_memory() {
    let (sim, certs) = start_sim_tls().await;
    sim.add_download("big-recording", SIZE);
    let archive = tempfile::tempdir().unwrap();
    let mut config = live_config(&sim, archive.path());
    config.ca_file = Some(certs.path().join("ca.pem"));
    let effects = live(config, oauth(&sim));
    let before = status_kib("VmHWM:");

    let started = Instant::now();
    let answer = perform(
        &effects,
        &context(Duration::from_secs(600)),
        "zoom.download",
        json!({"file": {"download_url": sim.download_url("big-recording"), "file_size": SIZE},
               "dest": "big/recording.mp4"}),
    )
    .await
    .unwrap();
    let took = started.elapsed();

    let peak = status_kib("VmHWM:");
    let path = archive.path().join("big/recording.mp4");
    assert_eq!(answer["bytes"], SIZE);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), SIZE);
    eprintln!(
        "downloaded {} MiB in {:.1} s ({:.0} MiB/s); VmHWM {} KiB before, {} KiB after",
        SIZE >> 20,
        took.as_secs_f64(),
        (SIZE >> 20) as f64 / took.as_secs_f64(),
        before,
        peak
    );
    spot_check(&path);
    std::fs::remove_file(&path).unwrap();
    assert!(
        peak < PEAK_LIMIT_KIB,
        "peak resident memory {peak} KiB is over {PEAK_LIMIT_KIB} KiB"
    );
}
