//! The cluster listener's door: a request gets in with the cluster token, from a Secret
//! that Kubernetes RBAC guards (deploy/README.md, "Who can read the API").
//!
//! Why a token of our own and not the user's: the API server's pod proxy, the way in from
//! a laptop, authenticates the user and then drops the `Authorization` header before it
//! forwards, so a daemon behind it never sees who called. Reading the Secret (`get` on
//! that one Secret) and using the pod proxy (`get` on `pods/proxy`) are the two grants
//! RBAC checks; the daemon checks the token, so that reaching the port on the pod network
//! is not enough.
use std::path::PathBuf;

use axum::{
    extract::{Request, State},
    http::{HeaderMap, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::{ApiError, access::Caller};

/// The header that carries the token through the pod proxy (which drops `Authorization`).
pub const TOKEN_HEADER: &str = "x-hangwatch-token";

/// Tokens shorter than this are refused as misconfiguration (the deploy README makes 32
/// random bytes).
const MIN_TOKEN_LEN: usize = 16;

/// Lets a request through as `Caller::Cluster` when it carries the token of `token_file`,
/// in `X-Hangwatch-Token` or as `Authorization: Bearer`.
pub async fn require_token(
    State(token_file): State<PathBuf>,
    mut request: Request,
    next: Next,
) -> Response {
    // Re-read each time: a rotated Secret takes effect without a restart (the file is a
    // few bytes on a tmpfs the kubelet keeps up to date).
    let expected = match std::fs::read_to_string(&token_file) {
        Ok(text) if text.trim().len() >= MIN_TOKEN_LEN => text.trim().to_owned(),
        Ok(_) | Err(_) => {
            tracing::warn!(
                "cluster API: no usable token in {} (at least {MIN_TOKEN_LEN} characters); refusing every request",
                token_file.display()
            );
            return ApiError::unavailable(
                "the cluster API has no token configured on this node (deploy/README.md, \"Who can read the API\")",
            )
            .into_response();
        }
    };
    match presented(request.headers()) {
        Some(token) if same(token.as_bytes(), expected.as_bytes()) => {
            request.extensions_mut().insert(Caller::Cluster);
            next.run(request).await
        }
        Some(_) => ApiError::unauthorized("wrong cluster API token").into_response(),
        None => ApiError::unauthorized(
            "the cluster API needs the token of the hangwatch-api-token Secret in X-Hangwatch-Token (hangwatch list --all-nodes sends it)",
        )
        .into_response(),
    }
}

fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(token) = headers.get(TOKEN_HEADER) {
        return token.to_str().ok().map(str::trim);
    }
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Compares in time that depends on the length only, so that the answer's timing does
/// not tell how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_from_either_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer abc".parse().expect("value"));
        assert_eq!(presented(&headers), Some("abc"));
        headers.insert(TOKEN_HEADER, "xyz".parse().expect("value"));
        assert_eq!(
            presented(&headers),
            Some("xyz"),
            "the proxy-proof header wins"
        );
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
    }
}
