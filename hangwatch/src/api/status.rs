//! `/api/v1/status`: the daemon itself: version, uptime, probes, scan figures, counters.
use std::{sync::Arc, time::SystemTime};

use axum::{Json, extract::State};
use serde_json::{Value, json};

use super::{Api, ApiError, Params, RawParams, access::Caller};
use crate::{clock, sink::started_at};

/// The daemon's own figures are every caller's; the webhook URL (it may carry a secret in
/// its path or query) only a privileged caller's.
pub async fn status(
    State(api): State<Arc<Api>>,
    caller: Caller,
    raw: RawParams,
) -> Result<Json<Value>, ApiError> {
    Params::check(raw, &[])?;
    let status = api.store.status();
    let started = started_at();
    let uptime = SystemTime::now()
        .duration_since(started)
        .unwrap_or_default();
    let mut body = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "started_at": clock::rfc3339(started),
        "uptime_s": uptime.as_secs(),
        "open_episodes": api.store.open_count(),
    });
    if let (Value::Object(body), Ok(Value::Object(status))) =
        (&mut body, serde_json::to_value(&status))
    {
        body.extend(status);
    }
    if !caller.is_privileged()
        && let Some(webhook) = body.pointer_mut("/config/webhook")
        && !webhook.is_null()
    {
        *webhook = Value::from("<set; shown to root only>");
    }
    Ok(Json(body))
}
