//! `/shoal/dashboard/credentials`: shoal's own route behind `shoal dashboard credentials`,
//! answered only to root on the daemon's unix socket (checked with `SO_PEERCRED`).
//! `GET` gives the plaintext credential this manager keeps (`{"Credential": …}`, or an empty
//! one with a `Message` saying why there is none); `POST ?reset=1` sets a new random one for
//! the whole cluster and gives it.

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde_json::json;

use crate::http::{self, ApiError, ApiResult, Query};
use crate::ApiState;

/// Whether the connection's peer is root on the unix socket (set per connection by the server).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LocalRoot(pub bool);

pub(crate) async fn credentials(state: &ApiState, req: Request<Incoming>) -> ApiResult {
    if !req.extensions().get::<LocalRoot>().is_some_and(|r| r.0) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the dashboard credential is only given to root on the daemon's unix socket",
        ));
    }
    let reset = req.method() == Method::POST && Query::parse(&req).bool("reset");
    if reset {
        let credential = state.swarm.reset_dashboard_credential().await?;
        return Ok(http::json(
            StatusCode::OK,
            &json!({ "Credential": credential, "Reset": true }),
        ));
    }
    match state.swarm.dashboard_credential().await? {
        Some(c) => Ok(http::json(StatusCode::OK, &json!({ "Credential": c }))),
        None => Ok(http::json(
            StatusCode::OK,
            &json!({
                "Credential": "",
                "Message": "this manager keeps no plaintext dashboard credential (it joined the swarm later, or the credential was changed from the dashboard); run `shoal dashboard credentials --reset` to set a new one"
            }),
        )),
    }
}
