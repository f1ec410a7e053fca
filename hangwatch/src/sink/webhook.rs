//! `--webhook URL`: POSTs each event's JSON to a receiver (an alert relay, a chat bridge).
//!
//! The scan hands events over through a bounded queue and never waits: a receiver that is
//! down or slow costs dropped events, counted in `hangwatch_sink_dropped_events_total`,
//! never a late detection. Each event gets a bounded number of attempts, each bounded in
//! time; connection errors, 429 and 5xx are retried with a growing pause, other answers
//! are final.
//!
//! `https://` goes through rustls (with ring, as the Kubernetes client does), trusting the
//! system's CA certificates or only those of `--webhook-ca`. What could send an event
//! somewhere else than the URL says is off unless asked for: redirects
//! (`--webhook-follow-redirects`) and the environment's proxy (`--webhook-env-proxy`).
use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        mpsc::{self, SyncSender, TrySendError},
    },
    thread,
    time::Duration,
};

use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig, TlsProvider};

use super::HangEvent;
use crate::{config::WebhookUrl, metrics::Metrics};

/// Events waiting for delivery; more are dropped.
const QUEUE: usize = 256;
/// Attempts per event (the first and its retries).
const ATTEMPTS: u32 = 3;
/// The pause before the first retry; doubled before each next one.
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(250);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The whole of one attempt: connect, send, read the answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Redirects followed with `--webhook-follow-redirects`.
const MAX_REDIRECTS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot start the webhook thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("cannot read the webhook CA file {path}")]
    ReadCa {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the webhook CA file {path} is not PEM")]
    BadCa {
        path: String,
        #[source]
        source: ureq::Error,
    },
    #[error("the webhook CA file {path} holds no certificate (-----BEGIN CERTIFICATE-----)")]
    NoCaCertificate { path: String },
    #[error(
        "no CA certificate found in the system's store ({errors}): install ca-certificates, set SSL_CERT_FILE, or give --webhook-ca"
    )]
    NoSystemRoots { errors: String },
    #[error("--webhook-ca applies to an https:// webhook, not to {url}")]
    CaWithoutTls { url: String },
    #[error("cannot read the webhook token file {path}")]
    ReadToken {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the webhook token file {path} is empty")]
    EmptyToken { path: String },
}

/// The webhook and how to reach it: flags `--webhook*` or their config keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    pub url: WebhookUrl,
    /// PEM file of the CA certificates to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// File holding the bearer token sent with each POST.
    pub token_file: Option<PathBuf>,
    pub follow_redirects: bool,
    /// Use the proxy of the environment (`HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`...).
    pub env_proxy: bool,
}

impl std::fmt::Display for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            url,
            ca_file,
            token_file,
            follow_redirects,
            env_proxy,
        } = self;
        write!(f, "{url}")?;
        if let Some(ca) = ca_file {
            write!(f, ", CA {}", ca.display())?;
        }
        if let Some(token) = token_file {
            write!(f, ", bearer token from {}", token.display())?;
        }
        if *follow_redirects {
            f.write_str(", follows redirects")?;
        }
        if *env_proxy {
            f.write_str(", proxy from the environment")?;
        }
        Ok(())
    }
}

pub struct WebhookSink {
    queue: SyncSender<HangEvent>,
    metrics: Arc<Metrics>,
    /// Told when the delivery thread has sent everything queued.
    flushed: mpsc::Receiver<()>,
}

impl WebhookSink {
    /// Checks what can be checked before the first event (the CA file or the system's
    /// roots, the token file) and starts the delivery thread.
    pub fn spawn(config: WebhookConfig, metrics: Arc<Metrics>) -> Result<Self, WebhookError> {
        let agent = agent(&config)?;
        let mut token = config.token_file.as_deref().map(Token::read).transpose()?;
        if token.is_some() && !config.url.is_https() {
            tracing::warn!(
                "webhook {}: the bearer token is sent in clear over http://",
                config.url
            );
        }
        let (queue, events) = mpsc::sync_channel::<HangEvent>(QUEUE);
        let worker_metrics = Arc::clone(&metrics);
        let (flushed_tx, flushed) = mpsc::channel();
        thread::Builder::new()
            .name("hangwatch-webhook".into())
            .spawn(move || {
                let _flushed = super::Flushed(flushed_tx);
                deliver_all(
                    &config.url,
                    &agent,
                    token.as_mut(),
                    &events,
                    &worker_metrics,
                );
            })
            .map_err(WebhookError::Thread)?;
        Ok(Self {
            queue,
            metrics,
            flushed,
        })
    }

    /// Closes the queue and waits until everything queued is delivered (or given up), or
    /// `until`. Returns whether it was.
    pub fn finish(self, until: std::time::Instant) -> bool {
        let Self { queue, flushed, .. } = self;
        drop(queue);
        super::wait_flushed(&flushed, until)
    }

    /// Queues the event; never blocks.
    pub fn send(&self, event: HangEvent) {
        match self.queue.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.metrics.dropped("webhook", "queue_full", 1);
            }
        }
    }
}

/// The HTTP client: no redirects and no proxy unless asked; for https, rustls with ring
/// and the roots of [`roots`].
fn agent(config: &WebhookConfig) -> Result<ureq::Agent, WebhookError> {
    let mut builder = ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(ATTEMPT_TIMEOUT))
        .http_status_as_error(false)
        .user_agent(concat!("hangwatch/", env!("CARGO_PKG_VERSION")))
        // 0: a 3xx is the answer (and fails the delivery, saying so).
        .max_redirects(if config.follow_redirects {
            MAX_REDIRECTS
        } else {
            0
        })
        // The token follows a redirect only to the same host.
        .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
        .proxy(if config.env_proxy {
            ureq::Proxy::try_from_env()
        } else {
            None
        });
    if config.url.is_https() {
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .root_certs(roots(config.ca_file.as_deref())?)
            .build();
        builder = builder.tls_config(tls);
    } else if config.ca_file.is_some() {
        return Err(WebhookError::CaWithoutTls {
            url: config.url.to_string(),
        });
    }
    Ok(builder.build().into())
}

/// The CA certificates of `ca_file`, else the system's (as OpenSSL finds them:
/// SSL_CERT_FILE, SSL_CERT_DIR, then the distribution's bundle).
fn roots(ca_file: Option<&Path>) -> Result<RootCerts, WebhookError> {
    let Some(path) = ca_file else {
        let found = rustls_native_certs::load_native_certs();
        if found.certs.is_empty() {
            let errors = found
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            return Err(WebhookError::NoSystemRoots {
                errors: if errors.is_empty() {
                    "none read".to_owned()
                } else {
                    errors
                },
            });
        }
        for err in &found.errors {
            tracing::debug!("system CA store: {err}");
        }
        let certs: Vec<Certificate<'static>> = found
            .certs
            .iter()
            .map(|der| Certificate::from_der(der.as_ref()).to_owned())
            .collect();
        return Ok(RootCerts::new_with_certs(&certs));
    };
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| WebhookError::ReadCa {
        path: shown.clone(),
        source,
    })?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(cert)) => certs.push(cert),
            Ok(_) => {} // a key beside the certificates: not ours to use
            Err(source) => {
                return Err(WebhookError::BadCa {
                    path: shown,
                    source,
                });
            }
        }
    }
    if certs.is_empty() {
        return Err(WebhookError::NoCaCertificate { path: shown });
    }
    Ok(RootCerts::new_with_certs(&certs))
}

/// The bearer token, read again before each event so that a rotated secret (a Kubernetes
/// Secret volume is updated in place) is used without a restart.
struct Token {
    path: PathBuf,
    value: String,
    /// The last re-read failed (said once, not per event).
    unreadable: bool,
}

impl Token {
    fn read(path: &Path) -> Result<Self, WebhookError> {
        Ok(Self {
            value: read_token(path)?,
            path: path.to_owned(),
            unreadable: false,
        })
    }

    /// The token in the file now; the last one read if it cannot be read.
    fn current(&mut self) -> &str {
        match read_token(&self.path) {
            Ok(value) => {
                self.value = value;
                self.unreadable = false;
            }
            Err(err) => {
                if !std::mem::replace(&mut self.unreadable, true) {
                    let cause = std::error::Error::source(&err)
                        .map_or_else(String::new, |s| format!(": {s}"));
                    tracing::warn!("{err}{cause}; sending the last token read");
                }
            }
        }
        &self.value
    }
}

fn read_token(path: &Path) -> Result<String, WebhookError> {
    let shown = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| WebhookError::ReadToken {
        path: shown(),
        source,
    })?;
    // A Secret written with `echo` ends with a newline; the token is the one line.
    let token = text.trim();
    if token.is_empty() {
        return Err(WebhookError::EmptyToken { path: shown() });
    }
    Ok(token.to_owned())
}

fn deliver_all(
    url: &WebhookUrl,
    agent: &ureq::Agent,
    mut token: Option<&mut Token>,
    events: &mpsc::Receiver<HangEvent>,
    metrics: &Metrics,
) {
    let mut failing = false;
    for event in events {
        let body = match serde_json::to_vec(&event) {
            Ok(body) => body,
            Err(err) => {
                tracing::error!("cannot serialize event {}: {err}", event.id);
                continue;
            }
        };
        let authorization = token
            .as_deref_mut()
            .map(|t| format!("Bearer {}", t.current()));
        match deliver(agent, url, authorization.as_deref(), &body, metrics) {
            Ok(()) => {
                if std::mem::replace(&mut failing, false) {
                    tracing::info!("webhook {url} accepts events again");
                }
            }
            Err(reason) => {
                metrics.dropped("webhook", "failed", 1);
                // One line when it starts failing, not one per event.
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(
                        "webhook {url}: event {} not delivered after {ATTEMPTS} attempts: {reason}",
                        event.id
                    );
                }
            }
        }
    }
}

/// Delivers one event, retrying what may succeed later. Returns why it gave up.
fn deliver(
    agent: &ureq::Agent,
    url: &WebhookUrl,
    authorization: Option<&str>,
    body: &[u8],
    metrics: &Metrics,
) -> Result<(), String> {
    let mut pause = FIRST_RETRY_PAUSE;
    let mut attempt = 1;
    loop {
        let mut request = agent
            .post(url.as_str())
            .header("content-type", "application/json");
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let (retry, reason) = match request.send(body) {
            Ok(response) => {
                let status = response.status();
                if status.is_success() {
                    metrics.webhook_request(true);
                    return Ok(());
                }
                let retry = status.is_server_error() || status.as_u16() == 429;
                let hint = if status.is_redirection() {
                    " (redirects are followed only with --webhook-follow-redirects)"
                } else {
                    ""
                };
                (retry, format!("the receiver answered {status}{hint}"))
            }
            Err(err) => (true, err.to_string()),
        };
        metrics.webhook_request(false);
        if !retry || attempt >= ATTEMPTS {
            return Err(reason);
        }
        tracing::debug!("webhook attempt {attempt} failed ({reason}); retrying in {pause:?}");
        thread::sleep(pause);
        pause *= 2;
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_and_https_urls_only() {
        assert!(WebhookUrl::parse("http://127.0.0.1:8080/hook").is_ok());
        assert!(WebhookUrl::parse("https://alerts.example/x").is_ok_and(|u| u.is_https()));
        for bad in ["ftp://x/", "127.0.0.1:80", "", "http://", "https://"] {
            let err = WebhookUrl::parse(bad).expect_err(bad).to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    fn config(url: &str) -> WebhookConfig {
        WebhookConfig {
            url: WebhookUrl::parse(url).expect("valid"),
            ca_file: None,
            token_file: None,
            follow_redirects: false,
            env_proxy: false,
        }
    }

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing.pem");
        let err = roots(Some(&missing)).expect_err("missing").to_string();
        assert!(err.contains("missing.pem"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let err = roots(Some(&empty)).expect_err("no certificate").to_string();
        assert!(err.contains("holds no certificate"), "{err}");
        let err = agent(&WebhookConfig {
            ca_file: Some(empty),
            ..config("http://127.0.0.1:1/")
        })
        .expect_err("CA without TLS")
        .to_string();
        assert!(err.contains("https://"), "{err}");
    }

    #[test]
    fn the_token_is_one_trimmed_line_and_read_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("token");
        std::fs::write(&path, "\n").expect("write");
        let err = Token::read(&path).err().expect("empty").to_string();
        assert!(err.contains("is empty"), "{err}");
        std::fs::write(&path, "s3cret\n").expect("write");
        let mut token = Token::read(&path).expect("token");
        assert_eq!(token.current(), "s3cret");
        std::fs::write(&path, "rotated").expect("write");
        assert_eq!(token.current(), "rotated");
        std::fs::remove_file(&path).expect("remove");
        assert_eq!(token.current(), "rotated", "the last one read is kept");
    }
}
