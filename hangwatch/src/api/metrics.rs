//! `/metrics`: the Prometheus text exposition (see `crate::metrics` for the metrics).
use std::sync::Arc;

use axum::{
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};

use super::Api;

pub async fn metrics(State(api): State<Arc<Api>>) -> Response {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        api.metrics.render(),
    )
        .into_response()
}
