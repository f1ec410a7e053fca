//! The HTTP server's listeners, each with what it serves and how it knows its callers:
//! - metrics (TCP, `--metrics-listen`): `/metrics` and `/healthz` only, aggregates that
//!   anyone who reaches the port may read;
//! - the unix socket (`--api-socket`): the whole API; the kernel tells who connected
//!   (SO_PEERCRED), and each answer holds only what that caller could read itself;
//! - cluster (TCP, `--cluster-api-listen`): the whole API for callers that show the
//!   cluster token (`cluster.rs`).
//!
//! Every listener bounds its connections (`MAX_CONNECTIONS`; more are closed at once and
//! counted in `hangwatch_limits_total{limit="http_connections"}`) and gives a client
//! `HEADER_TIMEOUT` to send a request's headers, also between requests on a kept-alive
//! connection: a client that connects and says nothing, or idles, loses its connection.
use std::{
    fs,
    os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use axum::{Router, body::Body, extract::Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::Semaphore,
};
use tower::ServiceExt;

use super::{access::Caller, peer};
use crate::metrics::Metrics;

/// Connections open at once on one listener. A `watch` stream holds one for as long as its
/// client wants, so this is above the limit of streams.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request's headers, or stay idle between requests.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            header_timeout: HEADER_TIMEOUT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot make the directory {path}")]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("another hangwatch daemon answers on {path}")]
    InUse { path: PathBuf },
    #[error("cannot bind the API socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no group named {0} (--api-socket-group)")]
    NoGroup(String),
}

/// Binds the API socket at `path`: owned by root, mode 0600, or 0660 with `group`'s gid.
///
/// The socket is bound in a directory only root can enter, given its owner and mode there,
/// then renamed into place (replacing a stale socket of a daemon that died): it is never
/// connectable with the looser mode the umask would give it at bind time.
pub fn bind_socket(
    path: &Path,
    group: Option<&str>,
) -> Result<std::os::unix::net::UnixListener, SocketError> {
    let gid = group.map(group_id).transpose()?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let directory = |source| SocketError::Directory {
        path: dir.to_path_buf(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(directory)?;
    if let Ok(meta) = fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(SocketError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(SocketError::InUse {
                path: path.to_path_buf(),
            });
        }
    }
    let bind = |source| SocketError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let staging = dir.join(format!(".hangwatch-bind-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(directory)?;
    let staged = staging.join("api.sock");
    let bound = (|| {
        let listener = std::os::unix::net::UnixListener::bind(&staged)?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&staged, None, Some(gid))?;
        }
        let mode = if gid.is_some() { 0o660 } else { 0o600 };
        fs::set_permissions(&staged, fs::Permissions::from_mode(mode))?;
        fs::rename(&staged, path)?;
        Ok(listener)
    })();
    let _ = fs::remove_dir_all(&staging);
    bound.map_err(bind)
}

/// A group's id, by name (through NSS, as `chgrp` does) or as a number.
fn group_id(group: &str) -> Result<u32, SocketError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name = std::ffi::CString::new(group).map_err(|_| SocketError::NoGroup(group.into()))?;
    let mut buffer = vec![0u8; 16 * 1024];
    // SAFETY: `entry` and `buffer` outlive the call; getgrnam_r writes only within them and
    // sets `found` to `entry` or null.
    unsafe {
        let mut entry: libc::group = std::mem::zeroed();
        let mut found: *mut libc::group = std::ptr::null_mut();
        let rc = libc::getgrnam_r(
            name.as_ptr(),
            &raw mut entry,
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            &raw mut found,
        );
        if rc != 0 || found.is_null() {
            return Err(SocketError::NoGroup(group.into()));
        }
        Ok(entry.gr_gid)
    }
}

/// Accepts connections until the runtime stops, serving `router` on each.
pub async fn serve<L: Accept>(listener: L, router: Router, limits: Limits, metrics: Arc<Metrics>) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let stream = match listener.accept_one().await {
            Ok(stream) => stream,
            Err(err) => {
                // Out of file descriptors, mostly: wait rather than spin.
                tracing::warn!("HTTP accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics.limit("http_connections", 1);
            drop(stream);
            continue;
        };
        let caller = L::caller(&stream);
        let router = router.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let mut request = request.map(Body::new);
                if let Some(caller) = &caller {
                    request.extensions_mut().insert(caller.clone());
                }
                router.clone().oneshot(request)
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(err) = connection.await {
                tracing::debug!("HTTP connection ended: {err}");
            }
        });
    }
}

/// A listener of either kind.
pub trait Accept: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept_one(&self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
    /// The caller at the other end, where the transport tells (the unix socket); on TCP
    /// the routes need none (metrics) or a layer of the router finds it (the cluster
    /// token).
    fn caller(stream: &Self::Stream) -> Option<Caller>;
}

impl Accept for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept_one(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(stream, _)| stream)
    }
    fn caller(_: &Self::Stream) -> Option<Caller> {
        None
    }
}

impl Accept for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_one(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(stream, _)| stream)
    }
    fn caller(stream: &Self::Stream) -> Option<Caller> {
        // SO_PEERCRED cannot fail on a connected unix socket; if it did, the request has
        // no caller and every per-process route answers 401.
        let cred = stream.peer_cred().ok()?;
        Some(Caller::Local(peer::local_caller(
            cred.pid().and_then(|p| u32::try_from(p).ok()),
            cred.uid(),
            cred.gid(),
        )))
    }
}
