//! `/api/v1/hangs`: the open episodes, each with its last report (stacks included);
//! `/api/v1/hangs/{id}`: one episode, open or recently ended.
use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State},
};
use serde_json::{Value, json};

use super::{Api, ApiError, Params, RawParams, access::Caller};
use crate::sink::{HangEvent, redact};

/// Longest id accepted: ids are `KIND-TID-HEX`, far shorter.
const MAX_ID_LEN: usize = 128;

/// `GET /api/v1/hangs[?kind=KIND][&pid=PID]`, longest first: the episodes of the processes
/// the caller may read.
pub async fn list(
    State(api): State<Arc<Api>>,
    caller: Caller,
    raw: RawParams,
) -> Result<Json<Value>, ApiError> {
    let params = Params::check(raw, &["kind", "pid"])?;
    let pid = match params.text("pid") {
        Some(_) => Some(params.number("pid", 1..=u64::from(super::threads::PID_MAX), 0)?),
        None => None,
    };
    let kind = params.text("kind");
    let hangs: Vec<Arc<HangEvent>> = api
        .store
        .current()
        .into_iter()
        .filter(|e| kind.is_none_or(|k| e.kind.as_str() == k))
        .filter(|e| pid.is_none_or(|p| u64::from(e.pid) == p))
        .filter_map(|e| visible(&api, &caller, e))
        .collect();
    Ok(Json(json!({ "hangs": hangs })))
}

/// The event as `caller` may see it: `None` when its process is not the caller's to
/// read, without raw kernel addresses unless the caller could read kallsyms.
pub fn visible(api: &Api, caller: &Caller, event: Arc<HangEvent>) -> Option<Arc<HangEvent>> {
    caller.may_read(api.store.owner(&event.id).as_ref()).ok()?;
    Some(for_caller(caller, event))
}

/// Strips kernel addresses for a caller that may not read them.
fn for_caller(caller: &Caller, event: Arc<HangEvent>) -> Arc<HangEvent> {
    if caller.sees_kernel_addresses() {
        return event;
    }
    let mut event = Arc::unwrap_or_clone(event);
    redact::strip_kernel_addresses(&mut event);
    Arc::new(event)
}

/// `GET /api/v1/hangs/{id}`.
pub async fn one(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(id): Path<String>,
    raw: RawParams,
) -> Result<Json<Arc<HangEvent>>, ApiError> {
    Params::check(raw, &[])?;
    if id.len() > MAX_ID_LEN
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ApiError::bad_request(
            "an episode id is letters, digits, '-' and '_' (like off_cpu-4242-1a2b3c)",
        ));
    }
    let event = api.store.episode(&id).ok_or_else(|| {
        ApiError::not_found(format!(
            "no episode `{id}`: not open, and not among the {} most recent ended ones",
            crate::sink::HISTORY_CAPACITY
        ))
    })?;
    caller
        .may_read(api.store.owner(&id).as_ref())
        .map_err(|denied| ApiError::forbidden(&denied))?;
    Ok(Json(for_caller(&caller, event)))
}
