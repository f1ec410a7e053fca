//! `/api/v1/watch`: every event from now on, as it happens: newline-delimited JSON (one
//! event per line, as `--output json` prints them), with an empty line every
//! `KEEPALIVE` so that a client can tell a quiet daemon from a dead connection.
use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use axum::{
    body::Body,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use tokio::sync::{broadcast::error::RecvError, mpsc};

use super::{Api, ApiError, Params, RawParams, access::Caller, hangs::visible};

const KEEPALIVE: Duration = Duration::from_secs(15);
/// Streams open at once; more are refused (503): each holds a task, a buffer and a
/// connection for as long as its client wants.
pub const MAX_STREAMS: usize = 32;

/// Counts an open stream while it lives.
struct StreamSlot(Arc<Api>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.watch_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Only the events of processes the caller may read.
pub async fn watch(
    State(api): State<Arc<Api>>,
    caller: Caller,
    raw: RawParams,
) -> Result<Response, ApiError> {
    Params::check(raw, &[])?;
    if api.watch_streams.fetch_add(1, Ordering::Relaxed) >= MAX_STREAMS {
        api.watch_streams.fetch_sub(1, Ordering::Relaxed);
        api.metrics.limit("watch_streams", 1);
        return Err(ApiError::unavailable(format!(
            "busy: {MAX_STREAMS} watch streams are open already"
        )));
    }
    let slot = StreamSlot(Arc::clone(&api));
    let mut events = api.store.subscribe();
    let (tx, rx) = mpsc::channel::<Result<String, std::io::Error>>(16);
    tokio::spawn(async move {
        let _slot = slot;
        loop {
            let line = tokio::select! {
                event = events.recv() => match event {
                    Ok(event) => {
                        // Another user's process: not this caller's to see.
                        let Some(event) = visible(&api, &caller, event) else {
                            continue;
                        };
                        match serde_json::to_string(&*event) {
                            Ok(json) => json + "\n",
                            Err(_) => continue,
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        api.metrics.dropped("watch", "queue_full", missed);
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                },
                () = tokio::time::sleep(KEEPALIVE) => "\n".to_owned(),
            };
            // The client went away.
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (line, rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}
