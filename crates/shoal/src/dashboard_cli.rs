//! `shoal dashboard credentials [--reset]`: asks the local daemon (over its unix socket, as
//! root) for the dashboard credential this manager keeps, or sets a new random one.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
pub struct DashboardArgs {
    #[command(subcommand)]
    command: DashboardCommand,
}

#[derive(Subcommand)]
enum DashboardCommand {
    /// Print the dashboard's login credential (root only, on a manager).
    Credentials {
        /// Set a new random credential for the whole swarm and print it.
        #[arg(long)]
        reset: bool,
        /// The daemon's socket, like the daemon's -H.
        #[arg(
            short = 'H',
            long = "host",
            default_value = "unix:///run/shoal/shoal.sock"
        )]
        host: String,
    },
}

pub fn run(args: DashboardArgs) -> Result<()> {
    match args.command {
        DashboardCommand::Credentials { reset, host } => credentials(reset, &host),
    }
}

fn credentials(reset: bool, host: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("only root may read the dashboard credential; run it with sudo");
    }
    let path = match host.strip_prefix("unix://") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ if host.starts_with('/') => PathBuf::from(host),
        _ => bail!("invalid host {host}: the credential is only given over the daemon's unix socket (unix:///path)"),
    };
    let mut stream = UnixStream::connect(&path)
        .with_context(|| format!("connecting to the daemon at {}", path.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let request = if reset {
        "POST /shoal/dashboard/credentials?reset=1 HTTP/1.1\r\nHost: shoal\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    } else {
        "GET /shoal/dashboard/credentials HTTP/1.1\r\nHost: shoal\r\nConnection: close\r\n\r\n"
    };
    stream
        .write_all(request.as_bytes())
        .context("sending the request to the daemon")?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .context("reading the daemon's answer")?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("the daemon sent no HTTP answer")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("the daemon sent no HTTP status")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    let value: serde_json::Value = serde_json::from_str(body.trim())
        .with_context(|| format!("the daemon's answer is not JSON: {body:?}"))?;
    if status != 200 {
        bail!("{}", value["message"].as_str().unwrap_or(body.trim()));
    }
    let credential = value["Credential"].as_str().unwrap_or_default();
    if credential.is_empty() {
        bail!(
            "{}",
            value["Message"]
                .as_str()
                .unwrap_or("no dashboard credential is kept on this manager")
        );
    }
    println!("{credential}");
    if reset {
        eprintln!("The dashboard credential was changed for every manager; existing logins stay until they expire.");
    }
    Ok(())
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}
