//! `/healthz`: 200 once the probes are attached and the scan runs, 503 before.
use std::sync::Arc;

use axum::{
    extract::State,
    response::{IntoResponse, Response},
};

use super::{Api, ApiError};

pub async fn healthz(State(api): State<Arc<Api>>) -> Response {
    if api.ready() {
        "ok\n".into_response()
    } else {
        ApiError::unavailable("starting: the probes are not loaded yet").into_response()
    }
}
