//! `shoal-shim shim …` / `shoal-shim exec-helper …`: the per-container shim and the exec helper
//! as their own small binary. One shim stays resident per running container, so its pages are
//! per-container memory: this binary uses only shoal-runtime (≈ 7 MB with 0.4 MB of relocated
//! read-only data, against ≈ 29 MB and 0.8 MB for `shoal`) and is linked position-dependent
//! (build.rs), so the loader relocates nothing and pages are read in only when used. The engine
//! runs it when it sits next to `shoal` (`shoal_engine::shim_exe_for`), else `shoal shim`.

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let code = shoal_runtime::helper_main(&argv).unwrap_or_else(|| {
        eprintln!("usage: shoal-shim shim|exec-helper <args> (started by shoal daemon)");
        2
    });
    std::process::exit(code);
}
