//! Link the daemon with packed relative relocations (DT_RELR).
//!
//! A position-independent binary (kept for ASLR) carries one relocation
//! per pointer in its read-only data; as classic RELA entries those were
//! 1.2 MB of the file, read by the loader at every start and left resident
//! in every daemon (file-backed RSS). RELR packs the same relocations into a
//! few KB. Needs GNU ld 2.38+ (or lld) to link and glibc 2.36+ to run
//! (Debian 12, the supported target); see BENCHMARKS.md, "Idle memory".

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if linux_gnu {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
