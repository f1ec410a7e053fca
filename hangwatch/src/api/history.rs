//! `/api/v1/history`: recently ended episodes, each as its `resolved` event (the last
//! report, stacks included, with the final duration and how it ended).
use std::sync::Arc;

use axum::{Json, extract::State};
use serde_json::{Value, json};

use super::{Api, ApiError, Params, RawParams, access::Caller, hangs::visible};
use crate::sink::HISTORY_CAPACITY;

const DEFAULT_LIMIT: u64 = 50;

/// `GET /api/v1/history[?limit=N]`, most recent first: the episodes of the processes the
/// caller may read (`limit` counts those).
pub async fn list(
    State(api): State<Arc<Api>>,
    caller: Caller,
    raw: RawParams,
) -> Result<Json<Value>, ApiError> {
    let params = Params::check(raw, &["limit"])?;
    let limit = params.number("limit", 1..=HISTORY_CAPACITY as u64, DEFAULT_LIMIT)?;
    let limit = usize::try_from(limit).unwrap_or(HISTORY_CAPACITY);
    let history: Vec<_> = api
        .store
        .history(HISTORY_CAPACITY)
        .into_iter()
        .filter_map(|e| visible(&api, &caller, e))
        .take(limit)
        .collect();
    Ok(Json(json!({
        "history": history,
        "capacity": HISTORY_CAPACITY,
    })))
}
