//! `/healthz`: 200 once the probes are attached and while the detection loop completes
//! its scans; 503 before, and when the last scan is older than a few scan intervals (the
//! loop is stuck or dead: the daemon is blind and the kubelet should restart it).
use std::sync::Arc;

use axum::{
    extract::State,
    response::{IntoResponse, Response},
};

use super::{Api, ApiError};

pub async fn healthz(State(api): State<Arc<Api>>) -> Response {
    if !api.ready() {
        return ApiError::unavailable("starting: the probes are not loaded yet").into_response();
    }
    match api.scan_overdue() {
        None => "ok\n".into_response(),
        Some(ago) => ApiError::unavailable(format!(
            "blind: the detection loop has not completed a scan for {ago:?} (more than {} scan intervals)",
            super::STALE_SCANS
        ))
        .into_response(),
    }
}
