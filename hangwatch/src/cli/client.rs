//! The CLI's side of the HTTP API: GET a JSON document, or follow the event stream.
//! Errors say what to do: start the daemon, fix `--endpoint`, or what the daemon refused.
use std::{io::BufRead, time::Duration};

use clap::Args;
use serde_json::Value;

/// Where the daemon's API is, and how to print its answers.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The daemon's HTTP API (`hangwatch run --listen`) [default: http://127.0.0.1:9924]
    #[arg(
        long,
        env = "HANGWATCH_ENDPOINT",
        value_name = "URL",
        default_value = "http://127.0.0.1:9924",
        hide_default_value = true
    )]
    pub endpoint: String,

    /// Print the API's JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

/// The largest answer read (a thread dump of a process with thousands of threads, with
/// stacks, is a few MiB).
const MAX_BODY: u64 = 256 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--endpoint `{0}`: expected http://HOST:PORT (e.g. http://127.0.0.1:9924)")]
    BadEndpoint(String),
    #[error(
        "cannot reach the hangwatch daemon at {endpoint} ({reason}); is `hangwatch run` running with --listen at that address? (--endpoint or HANGWATCH_ENDPOINT to change it)"
    )]
    Unreachable { endpoint: String, reason: String },
    #[error("{message} (HTTP {status})")]
    Refused { status: u16, message: String },
    #[error("the daemon at {endpoint} gave an answer that is not JSON ({reason})")]
    BadReply { endpoint: String, reason: String },
}

pub struct Client {
    endpoint: String,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(args: &ClientArgs) -> Result<Self, ClientError> {
        let endpoint = args.endpoint.trim_end_matches('/').to_owned();
        let valid = endpoint
            .strip_prefix("http://")
            .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'));
        if !valid || endpoint.parse::<ureq::http::Uri>().is_err() {
            return Err(ClientError::BadEndpoint(args.endpoint.clone()));
        }
        let agent = ureq::Agent::config_builder()
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .http_status_as_error(false)
            .user_agent(concat!("hangwatch-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Self { endpoint, agent })
    }

    /// GETs `path` (e.g. `/api/v1/hangs`) and parses the JSON answer; a 4xx/5xx becomes
    /// `Refused` with the daemon's own message.
    pub fn get(&self, path: &str) -> Result<Value, ClientError> {
        let response = self
            .agent
            .get(format!("{}{path}", self.endpoint))
            .config()
            .timeout_global(Some(REQUEST_TIMEOUT))
            .build()
            .call()
            .map_err(|e| self.unreachable(&e))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(|e| self.unreachable(&e))?;
        let value: Value = serde_json::from_str(&body).map_err(|e| ClientError::BadReply {
            endpoint: self.endpoint.clone(),
            reason: e.to_string(),
        })?;
        if status >= 400 {
            let message = value["error"]
                .as_str()
                .unwrap_or("the daemon refused the request")
                .to_owned();
            return Err(ClientError::Refused { status, message });
        }
        Ok(value)
    }

    /// Opens the event stream at `path`: one JSON event per line, empty keep-alive lines.
    pub fn stream(&self, path: &str) -> Result<impl BufRead + use<>, ClientError> {
        let response = self
            .agent
            .get(format!("{}{path}", self.endpoint))
            .call()
            .map_err(|e| self.unreachable(&e))?;
        let status = response.status().as_u16();
        if status >= 400 {
            return Err(ClientError::Refused {
                status,
                message: "the daemon refused the event stream".into(),
            });
        }
        Ok(std::io::BufReader::new(response.into_body().into_reader()))
    }

    fn unreachable(&self, err: &ureq::Error) -> ClientError {
        let reason = match err {
            ureq::Error::Io(io) => io.to_string(),
            ureq::Error::ConnectionFailed => "connection failed".to_owned(),
            ureq::Error::HostNotFound => "host not found".to_owned(),
            ureq::Error::Timeout(t) => format!("timed out ({t})"),
            other => other.to_string(),
        };
        ClientError::Unreachable {
            endpoint: self.endpoint.clone(),
            reason,
        }
    }
}

/// Percent-encodes a path segment or query value (ids and kinds are plain already; this
/// keeps a stray character from changing the request).
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Prints a JSON answer for scripts.
pub fn print_json(value: &Value) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(_) => println!("{value}"),
    }
}
