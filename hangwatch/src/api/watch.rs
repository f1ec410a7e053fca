//! `/api/v1/watch`: every event from now on, as it happens: newline-delimited JSON (one
//! event per line, as `--output json` prints them), with an empty line every
//! `KEEPALIVE` so that a client can tell a quiet daemon from a dead connection.
use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use tokio::sync::{broadcast::error::RecvError, mpsc};

use super::{Api, ApiError, Params, RawParams, access::Caller, hangs::visible};

const KEEPALIVE: Duration = Duration::from_secs(15);

/// Only the events of processes the caller may read.
pub async fn watch(
    State(api): State<Arc<Api>>,
    caller: Caller,
    raw: RawParams,
) -> Result<Response, ApiError> {
    Params::check(raw, &[])?;
    let mut events = api.store.subscribe();
    let (tx, rx) = mpsc::channel::<Result<String, std::io::Error>>(16);
    tokio::spawn(async move {
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
