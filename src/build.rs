//! Build script: lays out the deployed (`dist`) binary so that the code an idle or lightly used
//! plugin runs sits together, and strips its symbols at link time.
//!
//! Why: the kernel maps the cached pages around each page of code a process touches
//! (fault-around, 64 kB by default), so the idle plugin's resident code followed the size of
//! its text (1.7 of 2.1 MB) more than the code it ran (~0.4 MB). `src/symbol-order.txt` names
//! the functions the dist build runs at start, idle, on the README's requests and with a
//! region on LL-MEC (written by `.ci/symbol-order generate` from valgrind runs); the linker
//! (rust-lld) places them first. BENCHMARKS.md "Footprint" has the figures.
//!
//! The names carry hashes that depend on the exact profile, so the dist profile keeps its
//! symbols (`strip = false`, part of those hashes) and this script strips them instead
//! (`--strip-all`, which is not): `.ci/symbol-order` then builds the very same profile with
//! `MEC_PLUGIN_KEEP_SYMBOLS=1` to read the names. Only builds at `opt-level = "z"` (the dist
//! profile) are touched. Each option goes to the linker only if a probe program, linked by the
//! same compiler for the same target with the same flags, links with it: not every linker
//! takes them (GNU ld has no ordering file, macOS's ld no `--strip-all`; a distribution's
//! rustc may link with the system's `cc` and ld), and a binary the linker cannot order is the
//! same but for its layout. A cargo warning says what was left out.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The ordering file, relative to the package root.
const ORDER: &str = "src/symbol-order.txt";

fn main() {
    println!("cargo::rerun-if-changed={ORDER}");
    println!("cargo::rerun-if-changed=src/build.rs");
    println!("cargo::rerun-if-env-changed=MEC_PLUGIN_KEEP_SYMBOLS");
    println!("cargo::rerun-if-env-changed=RUSTC_LINKER");
    if env::var("OPT_LEVEL").as_deref() != Ok("z") {
        return;
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    if env::var("MEC_PLUGIN_KEEP_SYMBOLS").as_deref() != Ok("1") {
        let strip = ["--strip-all"];
        if links_with(&out, &strip) {
            link_args(&strip);
        } else {
            println!(
                "cargo::warning=the linker does not take --strip-all: the binary keeps its symbols (run `strip` on it)"
            );
        }
    }
    let root = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    // The file names functions of one toolchain and tree; a name missing from this build
    // (renamed, inlined) is skipped, and `.ci/symbol-order check` says how many are.
    let order = [
        format!("--symbol-ordering-file={root}/{ORDER}"),
        "--no-warn-symbol-ordering".to_string(),
    ];
    if links_with(&out, &order) {
        link_args(&order);
    } else {
        println!(
            "cargo::warning=the linker does not take --symbol-ordering-file (rust-lld and lld do): the binary has the default layout, and more idle memory (ARCHITECTURE.md, The deployed build)"
        );
    }
}

/// Passes each of `args` to the linker of the binary (`-Xlinker`, so a comma in a path is kept).
fn link_args(args: &[impl AsRef<str>]) {
    for arg in args {
        println!("cargo::rustc-link-arg-bins=-Xlinker");
        println!("cargo::rustc-link-arg-bins={}", arg.as_ref());
    }
}

/// Whether an empty program links with `args` given to the linker, built by the compiler,
/// for the target, with the flags and the linker this build uses.
fn links_with(out: &Path, args: &[impl AsRef<str>]) -> bool {
    let source = out.join("probe.rs");
    if std::fs::write(&source, "fn main() {}\n").is_err() {
        return false;
    }
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let mut command = Command::new(rustc);
    command
        .arg("--crate-name=probe")
        .arg("--edition=2021")
        .arg("--target")
        .arg(env::var("TARGET").expect("cargo sets TARGET"))
        .arg("-o")
        .arg(out.join("probe"))
        .arg(&source);
    if let Ok(linker) = env::var("RUSTC_LINKER") {
        command.arg(format!("-Clinker={linker}"));
    }
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    command.args(flags.split('\x1f').filter(|flag| !flag.is_empty()));
    for arg in args {
        command
            .arg("-Clink-arg=-Xlinker")
            .arg(format!("-Clink-arg={}", arg.as_ref()));
    }
    command
        .output()
        .map(|output| output.status.success())
        .unwrap_or(false)
}
