//! Links `shoal-shim` as a position-dependent executable: no load-time relocations, so its
//! read-only data stays clean, shared between shims and demand-paged (see src/bin/shoal-shim.rs).
fn main() {
    println!("cargo:rustc-link-arg-bin=shoal-shim=-no-pie");
}
