//! `shoal`: one binary for the daemon and the helper processes it re-executes.
//!
//! This file is wiring only: it parses the command line, sets up logging and hands over to the
//! crates. The helper subcommands (`shim`, `exec-helper`, `archive-helper`) are dispatched before
//! any thread or async runtime exists, because they fork and `chroot`/`setns` and must stay
//! single-threaded.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use tracing::{info, warn};

mod dashboard_cli;
mod lab;

#[derive(Parser)]
#[command(name = "shoal", version, about = "Docker Swarm mode rebuilt in Rust: a container engine and swarm node in one binary")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node daemon (container engine + Docker Engine API).
    Daemon(DaemonArgs),
    /// Run a multi-node swarm on this machine: one network namespace and daemon per node.
    Lab(lab::LabArgs),
    /// The web dashboard managers serve: `shoal dashboard credentials [--reset]`.
    Dashboard(dashboard_cli::DashboardArgs),
}

#[derive(Parser)]
struct DaemonArgs {
    /// Daemon socket(s) to listen on: unix:///path or tcp://addr:port (repeatable).
    #[arg(short = 'H', long = "host", value_name = "HOST")]
    hosts: Vec<String>,
    /// Root directory of persistent state.
    #[arg(long, default_value = "/var/lib/shoal")]
    data_root: PathBuf,
    /// Root directory of runtime state (sockets, shim state, network namespaces).
    #[arg(long, default_value = "/run/shoal")]
    exec_root: PathBuf,
    /// Bridge IP and subnet of the node-local network, like dockerd's --bip.
    #[arg(long, default_value = "172.17.0.1/16")]
    bip: String,
    /// Name of the node-local bridge interface.
    #[arg(long, default_value = "shoal0")]
    bridge: String,
    /// Log level: error, warn, info, debug, trace.
    #[arg(short = 'l', long, default_value = "info")]
    log_level: String,
    /// Enable debug logging (same as --log-level debug).
    #[arg(short = 'D', long)]
    debug: bool,
    /// Where managers serve the web dashboard (IP:PORT or :PORT); "off" or "" disables it.
    #[arg(long, default_value = shoal_dashboard::DEFAULT_ADDR)]
    dashboard_addr: String,
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    // Helper processes: single-threaded, no runtime, no logging setup beyond what they do.
    if let Some(code) = run_helper(&argv) {
        std::process::exit(code);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Daemon(args) => run_daemon(args),
        Command::Lab(args) => lab::run(args),
        Command::Dashboard(args) => dashboard_cli::run(args),
    };
    if let Err(e) = result {
        eprintln!("shoal: {e:#}");
        std::process::exit(1);
    }
}

fn run_helper(argv: &[String]) -> Option<i32> {
    if let Some(code) = shoal_runtime::helper_main(argv) {
        return Some(code);
    }
    match argv.get(1).map(String::as_str) {
        Some("archive-helper") => Some(shoal_engine::archive::archive_helper_main(argv.get(2..).unwrap_or_default())),
        _ => None,
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},hyper=warn,libcontainer=warn,libcgroups=warn")));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn find_init_binary() -> Option<PathBuf> {
    ["/usr/bin/tini-static", "/usr/bin/docker-init", "/usr/libexec/docker/docker-init", "/usr/local/bin/docker-init"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// A stable ID for this daemon, kept in the data root.
fn daemon_id(data_root: &std::path::Path) -> Result<String> {
    let path = data_root.join("engine-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim().to_string();
        if !id.is_empty() {
            return Ok(id);
        }
    }
    let bytes: [u8; 16] = rand_bytes();
    let id = bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let id = format!("{}-{}-{}-{}-{}", &id[0..8], &id[8..12], &id[12..16], &id[16..20], &id[20..32]);
    let tmp = data_root.join(".engine-id.tmp");
    std::fs::write(&tmp, &id).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

fn rand_bytes() -> [u8; 16] {
    let mut out = [0u8; 16];
    if let Ok(data) = std::fs::read("/proc/sys/kernel/random/uuid") {
        let hex: String = String::from_utf8_lossy(&data).chars().filter(|c| c.is_ascii_hexdigit()).collect();
        for (i, chunk) in hex.as_bytes().chunks(2).take(16).enumerate() {
            out[i] = u8::from_str_radix(std::str::from_utf8(chunk).unwrap_or("0"), 16).unwrap_or(0);
        }
    }
    out
}

fn run_daemon(args: DaemonArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the daemon needs root privileges (it creates namespaces, mounts, cgroups and network interfaces); run it as root, e.g. with sudo");
    }
    init_logging(if args.debug { "debug" } else { &args.log_level });
    let hosts = if args.hosts.is_empty() {
        vec![format!("unix://{}", args.exec_root.join("shoal.sock").display())]
    } else {
        args.hosts.clone()
    };
    let specs = hosts
        .iter()
        .map(|h| shoal_api::ListenerSpec::parse(h).map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    let (gateway, subnet) = parse_bip(&args.bip)?;
    let dashboard_addr = shoal_dashboard::parse_addr(&args.dashboard_addr)?;
    std::fs::create_dir_all(&args.data_root).with_context(|| format!("creating {}", args.data_root.display()))?;
    std::fs::create_dir_all(&args.exec_root).with_context(|| format!("creating {}", args.exec_root.display()))?;
    let data_root = std::fs::canonicalize(&args.data_root)?;
    let exec_root = std::fs::canonicalize(&args.exec_root)?;
    let exec_root_len = exec_root.as_os_str().len();
    if exec_root_len > shoal_engine::MAX_EXEC_ROOT_LEN {
        bail!(
            "--exec-root {} is too long ({exec_root_len} bytes, at most {}): container sockets under it would exceed the unix socket path limit",
            exec_root.display(),
            shoal_engine::MAX_EXEC_ROOT_LEN
        );
    }

    let mut bridge = shoal_net::BridgeConfig::with_exec_root(&exec_root);
    bridge.bridge = args.bridge.clone();
    bridge.gateway = gateway;
    bridge.subnet = subnet.parse().map_err(|e| anyhow::anyhow!("invalid --bip {}: {e}", args.bip))?;

    let self_exe = std::env::current_exe().context("finding the shoal binary")?;
    let engine_cfg = shoal_engine::EngineConfig {
        data_root: data_root.clone(),
        exec_root: exec_root.clone(),
        shim_exe: shoal_engine::shim_exe_for(&self_exe),
        self_exe,
        bridge,
        init_path: find_init_binary(),
    };
    let daemon = shoal_api::DaemonInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        hostname: nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
        data_root: data_root.to_string_lossy().into_owned(),
        id: daemon_id(&data_root)?,
    };

    // Blocking-pool threads (filesystem, `ip`, shim spawns) carry their own stacks and malloc
    // arenas; let idle ones go after 2 s rather than tokio's 10 s so a quiet daemon stays small.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let engine = shoal_engine::Engine::open(engine_cfg).await.context("starting the engine")?;
        let mut listeners = Vec::new();
        for spec in &specs {
            listeners.push(shoal_api::Listener::bind(spec).await.with_context(|| format!("listening on {spec:?}"))?);
        }
        info!(data_root = %data_root.display(), exec_root = %exec_root.display(), "shoal daemon ready");
        let swarm = shoal_swarm::Swarm::load(engine.clone(), &data_root).await.context("resuming swarm membership")?;
        let dashboard = dashboard_addr.map(|addr| shoal_dashboard::spawn(swarm.clone(), addr));
        let state = shoal_api::ApiState { engine, swarm: swarm.clone(), daemon };
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        tokio::select! {
            _ = shoal_api::serve(state, listeners) => warn!("API server stopped"),
            _ = sigterm.recv() => info!("SIGTERM: shutting down, containers keep running (live restore)"),
            _ = sigint.recv() => info!("SIGINT: shutting down, containers keep running (live restore)"),
        }
        if let Some(d) = dashboard {
            d.abort();
        }
        swarm.shutdown().await;
        for spec in &specs {
            if let shoal_api::ListenerSpec::Unix(path) = spec {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

/// `172.17.0.1/16` → gateway 172.17.0.1, subnet 172.17.0.0/16.
fn parse_bip(bip: &str) -> Result<(std::net::Ipv4Addr, String)> {
    let (ip, prefix) = bip.split_once('/').context("--bip must look like 172.17.0.1/16")?;
    let ip: IpAddr = ip.parse().with_context(|| format!("invalid --bip address {ip}"))?;
    let IpAddr::V4(ip) = ip else { bail!("--bip must be an IPv4 address") };
    let prefix: u8 = prefix.parse().with_context(|| format!("invalid --bip prefix {prefix}"))?;
    if !(8..=30).contains(&prefix) {
        bail!("--bip prefix must be between 8 and 30");
    }
    let mask = u32::MAX << (32 - prefix);
    let net = std::net::Ipv4Addr::from(u32::from(ip) & mask);
    Ok((ip, format!("{net}/{prefix}")))
}
