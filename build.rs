//! Link options for the daemon's binary (bins only; tests are untouched).
//!
//! 1. Packed relative relocations (DT_RELR). A position-independent binary
//!    (kept for ASLR) carries one relocation per pointer in its read-only
//!    data; as classic RELA entries those were 1.2 MB of the file, read by
//!    the loader at every start and left resident in every daemon
//!    (file-backed RSS). RELR packs the same relocations into a few KB.
//!    Needs GNU ld 2.38+ (or lld) to link and glibc 2.36+ to run (Debian 12,
//!    the supported target); see BENCHMARKS.md, "Idle memory".
//! 2. The functions an idle daemon runs placed together at the start of
//!    `.text` (`link/symbol-order.txt`, made by `benches/symbol-order.sh`).
//!    The kernel maps up to 64 KiB of cached text around every page a
//!    process touches, so ~2,800 functions scattered through 7 MB of code
//!    kept nearly all of it resident; together they are ~1.6 MB. A name the
//!    binary no longer has is skipped: a stale list costs memory, never
//!    correctness. Only with lld (`--symbol-ordering-file`), which rustc
//!    uses by default on x86_64-unknown-linux-gnu since 1.90: left out when
//!    a linker is configured (`RUSTC_LINKER`, or `linker` in the
//!    rustflags), with an older rustc, or with
//!    `TENANTD_BUILD_NO_SYMBOL_ORDER=1` (not `HERMES_TENANTD_*`: the daemon
//!    reads those as configuration and refuses unknown ones).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link/symbol-order.txt");
    println!("cargo:rerun-if-env-changed=TENANTD_BUILD_NO_SYMBOL_ORDER");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let linux_gnu = env("CARGO_CFG_TARGET_OS") == "linux" && env("CARGO_CFG_TARGET_ENV") == "gnu";
    if linux_gnu {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    let lld_by_default = env("TARGET") == "x86_64-unknown-linux-gnu"
        && rustc_minor().is_some_and(|minor| minor >= 90)
        && env("RUSTC_LINKER").is_empty()
        && !env("CARGO_ENCODED_RUSTFLAGS").contains("link");
    let opted_out = !env("TENANTD_BUILD_NO_SYMBOL_ORDER").is_empty();
    let order = std::path::Path::new(&env("CARGO_MANIFEST_DIR")).join("link/symbol-order.txt");
    if lld_by_default && !opted_out && order.is_file() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// The minor version of the rustc building this crate (`1.N.x`).
fn rustc_minor() -> Option<u32> {
    let rustc = std::env::var_os("RUSTC")?;
    let out = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    text.split_whitespace()
        .nth(1)?
        .split('.')
        .nth(1)?
        .parse()
        .ok()
}
