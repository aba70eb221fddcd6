//! Two things for the binary's build:
//! - tells `zoomwire bench` which Cargo profile built it (`release`, `dist`,
//!   ...), for its report's header. Cargo tells a build script only
//!   `PROFILE`, `release` or `debug` (a custom profile gives the one it
//!   inherits from, so `dist` says `release`); the profile's own name is the
//!   folder of the output directory, `<target>/<profile>/build/<package>/out`;
//! - links the binaries with packed relative relocations (`DT_RELR`) where
//!   the linker and the C library support them (GNU ld 2.38, glibc 2.36):
//!   the executable stays position-independent, but its ~63,000 relative
//!   relocations take 28 KB instead of 1.5 MB (`.rela.dyn`), which the
//!   loader reads at every start and which then stayed resident. Idle RSS
//!   of the daemon: about 3 MiB less (`zoomwire bench`, release and dist).

use std::path::Path;
use std::process::{Command, Stdio};

fn main() {
    let out_dir = std::env::var("OUT_DIR").unwrap_or_default();
    let profile = Path::new(&out_dir)
        .ancestors()
        .nth(3)
        .and_then(|folder| folder.file_name())
        .and_then(|name| name.to_str())
        .unwrap_or("unknown")
        .to_string();
    println!("cargo:rustc-env=ZOOMWIRE_BUILD_PROFILE={profile}");
    if packs_relative_relocations(Path::new(&out_dir)) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}

/// Whether the linker Rust uses here links, with `-z pack-relative-relocs`,
/// a program that then runs: a Linux GNU target built on the machine it
/// targets, a linker that knows the option (an older one warns, and the
/// warning is made fatal) and a C library whose loader reads `DT_RELR`.
/// Anything else links as before.
fn packs_relative_relocations(out_dir: &Path) -> bool {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") != "linux"
        || var("CARGO_CFG_TARGET_ENV") != "gnu"
        || var("TARGET") != var("HOST")
    {
        return false;
    }
    let linker = std::env::var("RUSTC_LINKER").unwrap_or_else(|_| "cc".into());
    let program = out_dir.join("relr-probe");
    let linked = Command::new(&linker)
        .args(["-x", "c", "-", "-o"])
        .arg(&program)
        .args(["-pie", "-fPIE"])
        // Fatal first: ld warns about an option it does not know as it reads it.
        .args(["-Wl,--fatal-warnings", "-Wl,-z,pack-relative-relocs"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            let source = b"static int x; int *p = &x; int main(void) { return *p; }\n";
            child.stdin.take().expect("piped").write_all(source)?;
            child.wait()
        })
        .is_ok_and(|status| status.success());
    let runs = linked
        && Command::new(&program)
            .status()
            .is_ok_and(|status| status.success());
    if !runs {
        println!(
            "cargo:warning=linking without packed relative relocations ({linker} or the C library does not support them)"
        );
    }
    runs
}
