//! The CLI's side of the API: GET a JSON document, or follow the event stream, over the
//! daemon's unix socket (the default: `hangwatch run` serves the per-process API there) or
//! HTTP (a cluster listener, with `HANGWATCH_TOKEN`). Errors say what to do: start the
//! daemon, get access to the socket, fix `--endpoint`, or what the daemon refused.
use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Args;
use serde_json::Value;

/// Where the daemon's API is, and how to print its answers.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The daemon's API: `unix:PATH` of its socket (`hangwatch run --api-socket`), or an
    /// http:// URL of a cluster listener (its token in HANGWATCH_TOKEN)
    /// [default: unix:/run/hangwatch/api.sock]
    #[arg(
        long,
        env = "HANGWATCH_ENDPOINT",
        value_name = "ENDPOINT",
        default_value = concat!("unix:", "/run/hangwatch/api.sock"),
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
/// The cluster listener's token, for an http:// endpoint.
const TOKEN_ENV: &str = "HANGWATCH_TOKEN";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "--endpoint `{0}`: expected unix:PATH (e.g. unix:/run/hangwatch/api.sock) or http://HOST:PORT"
    )]
    BadEndpoint(String),
    #[error(
        "cannot reach the hangwatch daemon at {endpoint} ({reason}); is `hangwatch run` running there? (--endpoint or HANGWATCH_ENDPOINT to change it)"
    )]
    Unreachable { endpoint: String, reason: String },
    #[error(
        "no hangwatch API socket at {path}: is `hangwatch run` running on this machine? (--endpoint or HANGWATCH_ENDPOINT to change it)"
    )]
    NoSocket { path: String },
    #[error(
        "permission denied on {path}: the API socket is root's; run as root (sudo hangwatch ...), or have the daemon run with --api-socket-group GROUP and join that group"
    )]
    SocketDenied { path: String },
    #[error("{message} (HTTP {status})")]
    Refused { status: u16, message: String },
    #[error("the daemon at {endpoint} gave an answer that is not JSON ({reason})")]
    BadReply { endpoint: String, reason: String },
}

enum Transport {
    Unix(PathBuf),
    Http {
        agent: ureq::Agent,
        token: Option<String>,
    },
}

pub struct Client {
    endpoint: String,
    transport: Transport,
}

/// An answer's status and its body, still to be read.
struct Answer {
    status: u16,
    body: Box<dyn BufRead>,
}

impl Client {
    pub fn new(args: &ClientArgs) -> Result<Self, ClientError> {
        let endpoint = args.endpoint.trim_end_matches('/').to_owned();
        if let Some(path) = endpoint.strip_prefix("unix:") {
            let path = Path::new(path);
            if !path.is_absolute() {
                return Err(ClientError::BadEndpoint(args.endpoint.clone()));
            }
            return Ok(Self {
                transport: Transport::Unix(path.to_path_buf()),
                endpoint,
            });
        }
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
        let token = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty());
        Ok(Self {
            endpoint,
            transport: Transport::Http { agent, token },
        })
    }

    /// GETs `path` (e.g. `/api/v1/hangs`) and parses the JSON answer; a 4xx/5xx becomes
    /// `Refused` with the daemon's own message.
    pub fn get(&self, path: &str) -> Result<Value, ClientError> {
        let Answer { status, body } = self.request(path, Some(REQUEST_TIMEOUT))?;
        let mut text = String::new();
        body.take(MAX_BODY)
            .read_to_string(&mut text)
            .map_err(|e| self.unreachable(&e.to_string()))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| ClientError::BadReply {
            endpoint: self.endpoint.clone(),
            reason: e.to_string(),
        })?;
        if status >= 400 {
            return Err(refused(status, &value));
        }
        Ok(value)
    }

    /// Opens the event stream at `path`: one JSON event per line, empty keep-alive lines.
    pub fn stream(&self, path: &str) -> Result<impl BufRead + use<>, ClientError> {
        let Answer { status, body } = self.request(path, None)?;
        if status >= 400 {
            let mut text = String::new();
            let _ = body.take(64 * 1024).read_to_string(&mut text);
            let value = serde_json::from_str(&text).unwrap_or(Value::Null);
            return Err(refused(status, &value));
        }
        Ok(body)
    }

    fn request(&self, path: &str, timeout: Option<Duration>) -> Result<Answer, ClientError> {
        match &self.transport {
            Transport::Unix(socket) => self.unix_request(socket, path, timeout),
            Transport::Http { agent, token } => {
                let mut request = agent.get(format!("{}{path}", self.endpoint));
                if let Some(token) = token {
                    request = request.header(crate::api::TOKEN_HEADER, token);
                }
                let response = request
                    .config()
                    .timeout_global(timeout)
                    .build()
                    .call()
                    .map_err(|e| self.ureq_unreachable(&e))?;
                let status = response.status().as_u16();
                Ok(Answer {
                    status,
                    body: Box::new(BufReader::new(response.into_body().into_reader())),
                })
            }
        }
    }

    /// One request over the socket, as HTTP/1.0: the daemon closes the connection after
    /// the answer, so the body is whatever comes until the end (a stream, for `watch`).
    fn unix_request(
        &self,
        socket: &Path,
        path: &str,
        timeout: Option<Duration>,
    ) -> Result<Answer, ClientError> {
        let shown = socket.display().to_string();
        let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ClientError::NoSocket {
                path: shown.clone(),
            },
            std::io::ErrorKind::PermissionDenied => ClientError::SocketDenied {
                path: shown.clone(),
            },
            _ => self.unreachable(&e.to_string()),
        })?;
        let io = |e: std::io::Error| self.unreachable(&e.to_string());
        stream.set_read_timeout(timeout).map_err(io)?;
        stream
            .set_write_timeout(Some(CONNECT_TIMEOUT))
            .map_err(io)?;
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: localhost\r\nUser-Agent: hangwatch-cli/{}\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        )
        .map_err(io)?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).map_err(io)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| ClientError::BadReply {
                endpoint: self.endpoint.clone(),
                reason: format!("not an HTTP answer: {:?}", line.trim_end()),
            })?;
        // The headers: nothing in them matters here (the body ends with the connection).
        loop {
            line.clear();
            if reader.read_line(&mut line).map_err(io)? == 0 || line.trim_end().is_empty() {
                break;
            }
        }
        Ok(Answer {
            status,
            body: Box::new(reader),
        })
    }

    fn unreachable(&self, reason: &str) -> ClientError {
        ClientError::Unreachable {
            endpoint: self.endpoint.clone(),
            reason: reason.to_owned(),
        }
    }

    fn ureq_unreachable(&self, err: &ureq::Error) -> ClientError {
        let reason = match err {
            ureq::Error::Io(io) => io.to_string(),
            ureq::Error::ConnectionFailed => "connection failed".to_owned(),
            ureq::Error::HostNotFound => "host not found".to_owned(),
            ureq::Error::Timeout(t) => format!("timed out ({t})"),
            other => other.to_string(),
        };
        self.unreachable(&reason)
    }
}

/// A 4xx/5xx answer with the daemon's own words.
fn refused(status: u16, value: &Value) -> ClientError {
    let message = value["error"]
        .as_str()
        .unwrap_or("the daemon refused the request")
        .to_owned();
    ClientError::Refused { status, message }
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        client: ClientArgs,
    }

    #[test]
    fn the_default_endpoint_is_the_daemons_socket() {
        let args = Cli::parse_from(["hangwatch"]).client;
        if std::env::var_os("HANGWATCH_ENDPOINT").is_none() {
            assert_eq!(
                args.endpoint,
                format!("unix:{}", crate::api::options::DEFAULT_SOCKET)
            );
        }
        for bad in [
            "unix:relative.sock",
            "https://x:1",
            "http://x:1/path",
            "tcp:1",
        ] {
            let args = ClientArgs {
                endpoint: bad.into(),
                json: false,
            };
            assert!(
                matches!(Client::new(&args), Err(ClientError::BadEndpoint(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn says_what_to_do_without_a_socket() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("api.sock");
        let client = Client::new(&ClientArgs {
            endpoint: format!("unix:{}", path.display()),
            json: false,
        })
        .expect("valid");
        let err = client.get("/api/v1/hangs").expect_err("no daemon");
        assert!(matches!(err, ClientError::NoSocket { .. }), "{err}");
        assert!(err.to_string().contains("hangwatch run"), "{err}");
    }
}
