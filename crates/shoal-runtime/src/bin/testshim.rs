//! Test helper binary: `shoal-runtime-testshim shim <argv>` / `exec-helper <argv>`, mirroring
//! how the `shoal` binary wires the subcommands (dispatch before any thread is started).

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let code = match argv.first().map(String::as_str) {
        Some("shim") => match shoal_runtime::ShimArgs::from_argv(&argv[1..]) {
            Ok(a) => shoal_runtime::shim_main(a),
            Err(e) => {
                eprintln!("{e}");
                2
            }
        },
        Some("exec-helper") => match shoal_runtime::ExecHelperArgs::from_argv(&argv[1..]) {
            Ok(a) => shoal_runtime::exec_helper_main(a),
            Err(e) => {
                eprintln!("{e}");
                2
            }
        },
        _ => {
            eprintln!("usage: shoal-runtime-testshim shim|exec-helper <args>");
            2
        }
    };
    std::process::exit(code);
}
