//! Build script: lays out the deployed (`dist`) binary so that the code an idle or lightly used
//! plugin runs sits together, and strips its symbols at link time.
//!
//! Why: the kernel maps the cached pages around each page of code a process touches
//! (fault-around, 64 kB by default), so the idle plugin's resident code followed the size of
//! its text (1.7 of 2.1 MB) more than the code it ran (~0.4 MB). `src/symbol-order.txt` names
//! the functions the dist build runs at start, idle, on the README's requests and with a
//! region on LL-MEC (written by `.ci/symbol-order generate` from valgrind runs); the linker
//! (rust-lld) places them first.
//! BENCHMARKS.md "Footprint" has the figures.
//!
//! The names carry hashes that depend on the exact profile, so the dist profile keeps its
//! symbols (`strip = false`, part of those hashes) and this script strips them instead
//! (`--strip-all`, which is not): `.ci/symbol-order` then builds the very same profile with
//! `MEC_PLUGIN_KEEP_SYMBOLS=1` to read the names. Only builds at `opt-level = "z"` (the dist
//! profile) are touched; the order is given only where the linker is known to be rust-lld
//! (x86_64-unknown-linux-gnu, rustc 1.90 or later, no linker or linker flags configured):
//! other linkers do not all know the option, and without it the binary is the same but for
//! its layout.

use std::env;
use std::process::Command;

/// The ordering file, relative to the package root.
const ORDER: &str = "src/symbol-order.txt";

fn main() {
    println!("cargo::rerun-if-changed={ORDER}");
    println!("cargo::rerun-if-changed=src/build.rs");
    println!("cargo::rerun-if-env-changed=MEC_PLUGIN_KEEP_SYMBOLS");
    if env::var("OPT_LEVEL").as_deref() != Ok("z") {
        return;
    }
    if env::var_os("MEC_PLUGIN_KEEP_SYMBOLS").is_none() {
        link_arg("--strip-all");
    }
    if links_with_rust_lld() {
        let root = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        link_arg(&format!("--symbol-ordering-file={root}/{ORDER}"));
        // The file names functions of one toolchain and tree; a name missing from this build
        // (renamed, inlined) is skipped, and `.ci/symbol-order check` says how many are.
        link_arg("--no-warn-symbol-ordering");
    }
}

/// Passes `arg` to the linker of the binary (`-Xlinker`, so a comma in a path is kept).
fn link_arg(arg: &str) {
    println!("cargo::rustc-link-arg-bins=-Xlinker");
    println!("cargo::rustc-link-arg-bins={arg}");
}

/// Whether the binary is linked by rustc's own rust-lld: the default for this target since
/// rustc 1.90, unless a linker or linker flags are configured.
fn links_with_rust_lld() -> bool {
    if env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu")
        || env::var_os("RUSTC_LINKER").is_some()
    {
        return false;
    }
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if flags.contains("linker") || flags.contains("link-self-contained") {
        return false;
    }
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("-vV").output() else {
        return false;
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("release: "))
        .and_then(|release| {
            let mut parts = release.split('.');
            let major: u32 = parts.next()?.parse().ok()?;
            let minor: u32 = parts.next()?.parse().ok()?;
            Some((major, minor) >= (1, 90))
        })
        .unwrap_or(false)
}
