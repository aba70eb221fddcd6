//! Tells `zoomwire bench` which Cargo profile built this binary (`release`,
//! `dist`, ...), for its report's header. Cargo tells a build script only
//! `PROFILE`, `release` or `debug` (a custom profile gives the one it
//! inherits from, so `dist` says `release`); the profile's own name is the
//! folder of the output directory, `<target>/<profile>/build/<package>/out`.

fn main() {
    let out_dir = std::env::var("OUT_DIR").unwrap_or_default();
    let profile = std::path::Path::new(&out_dir)
        .ancestors()
        .nth(3)
        .and_then(|folder| folder.file_name())
        .and_then(|name| name.to_str())
        .unwrap_or("unknown")
        .to_string();
    println!("cargo:rustc-env=ZOOMWIRE_BUILD_PROFILE={profile}");
    println!("cargo:rerun-if-changed=build.rs");
}
