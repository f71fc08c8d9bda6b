//! Exec endpoints.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tracing::debug;

use shoal_engine::ExecConfig;

use crate::containers::pump_hijacked;
use crate::http::{self, ApiError, ApiResult, Query};
use crate::ApiState;

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ExecBody {
    attach_stdin: bool,
    attach_stdout: bool,
    attach_stderr: bool,
    tty: bool,
    env: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    privileged: bool,
    user: String,
    working_dir: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct StartBody {
    detach: bool,
    tty: bool,
}

pub async fn create(state: &ApiState, req: Request<Incoming>, id: &str) -> ApiResult {
    let body: ExecBody = http::read_json(req.into_body()).await?;
    let config = ExecConfig {
        cmd: body.cmd.unwrap_or_default(),
        env: body.env.unwrap_or_default(),
        user: body.user,
        working_dir: body.working_dir,
        tty: body.tty,
        attach_stdin: body.attach_stdin,
        attach_stdout: body.attach_stdout,
        attach_stderr: body.attach_stderr,
        privileged: body.privileged,
    };
    let exec_id = state.engine.exec_create(id, config).await?;
    Ok(http::json(StatusCode::CREATED, &json!({"Id": exec_id})))
}

pub async fn start(state: &ApiState, mut req: Request<Incoming>, id: &str) -> ApiResult {
    let upgrade = http::wants_upgrade(&req);
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let body: StartBody = http::read_json(req.into_body()).await?;
    state.engine.exec_inspect(id)?;
    let session = state.engine.exec_start(id, body.detach).await?;
    let Some(session) = session else {
        return Ok(http::empty(StatusCode::OK));
    };
    let content_type = if session.tty { http::RAW_STREAM } else { http::MULTIPLEXED };
    match on_upgrade {
        Some(on_upgrade) => {
            tokio::spawn(async move {
                match on_upgrade.await {
                    Ok(upgraded) => pump_hijacked(TokioIo::new(upgraded), session.tty, session.output, session.stdin).await,
                    Err(e) => debug!(error = %e, "exec upgrade failed"),
                }
            });
            Ok(http::upgrade_response(content_type))
        }
        None => {
            let tty = session.tty;
            let mut output = session.output;
            let (tx, rx) = mpsc::channel::<Bytes>(64);
            tokio::spawn(async move {
                while let Some((stream, data)) = output.recv().await {
                    let chunk = if tty { data } else { http::frame(stream, &data) };
                    if tx.send(chunk).await.is_err() {
                        return;
                    }
                }
            });
            Ok(http::streaming(StatusCode::OK, content_type, rx))
        }
    }
}

pub async fn resize(state: &ApiState, req: Request<Incoming>, id: &str) -> ApiResult {
    let q = Query::parse(&req);
    let h = q.int("h")?.unwrap_or(0);
    let w = q.int("w")?.unwrap_or(0);
    if !(0..=u16::MAX as i64).contains(&h) || !(0..=u16::MAX as i64).contains(&w) {
        return Err(ApiError::bad_request("invalid terminal size"));
    }
    state.engine.exec_resize(id, h as u16, w as u16)?;
    Ok(http::empty(StatusCode::OK))
}

pub async fn inspect(state: &ApiState, id: &str) -> ApiResult {
    let v = state.engine.exec_inspect(id)?;
    Ok(http::json(
        StatusCode::OK,
        &json!({
            "ID": v.id, "Running": v.running, "ExitCode": v.exit_code, "CanRemove": false, "ContainerID": v.container_id,
            "DetachKeys": "", "OpenStdin": v.config.attach_stdin, "OpenStdout": v.config.attach_stdout, "OpenStderr": v.config.attach_stderr,
            "Pid": v.pid,
            "ProcessConfig": {"tty": v.config.tty, "entrypoint": v.config.cmd.first().cloned().unwrap_or_default(),
                "arguments": v.config.cmd.iter().skip(1).cloned().collect::<Vec<_>>(), "privileged": v.config.privileged, "user": v.config.user},
        }),
    ))
}
