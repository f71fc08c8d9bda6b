//! Test helper binary: `shoal-runtime-testshim shim <argv>` / `exec-helper <argv>`, dispatched
//! exactly as the `shoal` and `shoal-shim` binaries do (before any thread is started).

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let code = shoal_runtime::helper_main(&argv).unwrap_or_else(|| {
        eprintln!("usage: shoal-runtime-testshim shim|exec-helper <args>");
        2
    });
    std::process::exit(code);
}
