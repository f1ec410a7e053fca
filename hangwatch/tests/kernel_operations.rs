//! Operating the daemon, on real hangs (abba.c deadlocked):
//!
//! - SIGHUP reloads the `--config` file: a rule that silenced abba is replaced by one that
//!   selects it for `off_cpu` at 1 s, and the reports come; then a bad file is refused with
//!   its `FILE:LINE:COL`, and a second abba is still reported under the rules in force;
//! - `--log-format json`: every line of stderr is a JSON object with the documented fields;
//! - an https webhook: a receiver with a certificate from a CA made here gets the events
//!   with the bearer token when the daemon trusts that CA (`--webhook-ca`), and a daemon
//!   that does not (system roots) refuses the receiver's certificate.

mod common;

use std::{
    io::{BufRead, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use self::common::*;

fn write(path: &Path, text: &str) {
    // As kubelet updates a mounted ConfigMap: a new file renamed over the old one.
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).unwrap_or_else(|e| panic!("writing {}: {e}", partial.display()));
    std::fs::rename(&partial, path)
        .unwrap_or_else(|e| panic!("renaming to {}: {e}", path.display()));
}

/// Waits until the daemon's stderr contains `text`; panics with the run's dump otherwise.
fn wait_for_log(daemon: &Daemon, text: &str, timeout: Duration) {
    if !wait_until(timeout, || daemon.stderr().contains(text)) {
        panic!(
            "no log line with {text:?} within {timeout:?}:\n{}",
            daemon.dump(Some(&[]))
        );
    }
}

const SILENCED: &str = "[[rule]]\ncomm = \"abba\"\ndeadlock = \"off\"\nlock_wait = \"off\"\n";
const SELECTED: &str = "[[rule]]\ncomm = \"abba\"\noff_cpu = \"1s\"\n";
/// Line 3, column 11: the value of off_cpu.
const BAD: &str = "[[rule]]\ncomm = \"abba\"\noff_cpu = \"1 sekond\"\n";

#[test]
#[ignore = "needs root: loads BPF programs"]
fn sighup_applies_a_good_file_and_refuses_a_bad_one() {
    require_root();
    let dir = tempfile::Builder::new()
        .prefix("hangwatch-reload")
        .tempdir()
        .expect("temp dir");
    let config = dir.path().join("hangwatch.toml");
    write(&config, SILENCED);
    let shown = config.to_string_lossy().into_owned();
    let mut abba = Abba::start();
    let mut daemon = Daemon::start(&["--config", &shown]);
    let lock = abba.deadlock();

    // Three times the deadlock's 1 s: silenced by the file's rule.
    thread::sleep(Duration::from_secs(3));
    assert!(
        daemon.events_for(abba.pid()).is_empty(),
        "abba is silenced by the first file:\n{}",
        daemon.dump(Some(&[abba.pid()]))
    );

    write(&config, SELECTED);
    signal(daemon.pid, libc::SIGHUP);
    wait_for_log(
        &daemon,
        &format!("{shown} reloaded: "),
        Duration::from_secs(5),
    );
    let stderr = daemon.stderr();
    assert!(
        stderr.contains("rule removed: comm = \"abba\" -> lock_wait off, deadlock off")
            && stderr.contains("rule added: comm = \"abba\" -> off_cpu 1s"),
        "the reload says what changed:\n{stderr}"
    );
    for tid in [lock.tid_a, lock.tid_b] {
        let hang = daemon.wait_for_event(
            &format!("off_cpu for abba worker {tid} after the reload"),
            Duration::from_secs(5),
            |v| is_event(v, "hang", "off_cpu", tid),
        );
        assert_eq!(u64_of(&hang.value, "/threshold_ms"), 1000, "{}", hang.value);
    }
    daemon.wait_for_event(
        "the deadlock, no longer silenced",
        Duration::from_secs(5),
        |v| str_of(v, "/kind") == "deadlock" && u64_of(v, "/pid") == u64::from(abba.pid()),
    );

    write(&config, BAD);
    signal(daemon.pid, libc::SIGHUP);
    wait_for_log(&daemon, "not reloaded", Duration::from_secs(5));
    let stderr = daemon.stderr();
    assert!(
        stderr.contains(&format!("{shown}:3:11: ")) && stderr.contains("sekond"),
        "the problem with its line and column:\n{stderr}"
    );

    // The rules in force are still the second file's: a new abba is reported as off_cpu
    // at 1 s (the bad file would have given no rule at all).
    let mut second = Abba::start();
    let second_lock = second.deadlock();
    let hang = daemon.wait_for_event(
        "off_cpu for the second abba, under the rules kept",
        Duration::from_secs(6),
        |v| is_event(v, "hang", "off_cpu", second_lock.tid_a),
    );
    assert_eq!(u64_of(&hang.value, "/threshold_ms"), 1000, "{}", hang.value);

    let metrics = get_ok(&format!("{}/metrics", daemon.endpoint())).text;
    for result in ["ok", "error"] {
        assert!(
            metrics.contains(&format!(
                "hangwatch_config_reloads_total{{result=\"{result}\"}} 1\n"
            )),
            "one reload {result}:\n{metrics}"
        );
    }
    let status = get_ok(&format!("{}/api/v1/status", daemon.endpoint())).json;
    assert_eq!(
        status
            .pointer("/config/rules/0/set/off_cpu")
            .and_then(|v| v.as_str()),
        Some("1s"),
        "status shows the rules in force: {status}"
    );
    check_episodes(&daemon.events_for(abba.pid()));
    daemon.stop();
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn json_logs_are_one_object_per_line_with_the_documented_fields() {
    require_root();
    let mut daemon = Daemon::start(&["--log-format", "json"]);
    // A warning too: SIGHUP without --config.
    signal(daemon.pid, libc::SIGHUP);
    wait_for_log(&daemon, "no --config file", Duration::from_secs(5));
    daemon.stop();
    let stderr = daemon.stderr();
    let lines: Vec<Value> = stderr
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line)
                .ok()
                .filter(Value::is_object)
                .unwrap_or_else(|| panic!("not a JSON object: {line:?}\n{stderr}"))
        })
        .collect();
    for v in &lines {
        let timestamp = str_of(v, "/timestamp");
        assert!(
            timestamp.len() >= 20
                && timestamp.as_bytes()[4] == b'-'
                && timestamp.as_bytes()[10] == b'T'
                && timestamp.ends_with('Z'),
            "an RFC 3339 UTC timestamp: {v}"
        );
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&str_of(v, "/level")),
            "{v}"
        );
        assert!(!str_of(v, "/message").is_empty(), "{v}");
        assert!(str_of(v, "/target").starts_with("hangwatch"), "{v}");
    }
    let has = |level: &str, start: &str| {
        lines
            .iter()
            .any(|v| str_of(v, "/level") == level && str_of(v, "/message").starts_with(start))
    };
    assert!(
        has("INFO", "metrics listening on http://127.0.0.1:"),
        "{stderr}"
    );
    assert!(has("INFO", "probes attached"), "{stderr}");
    assert!(has("WARN", "SIGHUP: no --config file"), "{stderr}");
    assert!(has("INFO", "received signal 15"), "{stderr}");
}

/// One POST the TLS receiver read.
#[derive(Clone)]
struct Post {
    authorization: Option<String>,
    body: Value,
}

/// An https server on loopback with a certificate for 127.0.0.1 signed by a CA made here;
/// answers 200 to a POST carrying the expected bearer token, 401 otherwise.
struct TlsReceiver {
    url: String,
    ca_pem: String,
    posts: Arc<Mutex<Vec<Post>>>,
    /// Connections whose TLS handshake failed (a client that did not trust the CA).
    refused: Arc<AtomicUsize>,
}

impl TlsReceiver {
    fn start(token: &str) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
            SanType,
        };
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "hangwatch test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_pem = ca.self_signed(&ca_key).expect("CA certificate").pem();
        let issuer = Issuer::new(ca, ca_key);
        let mut server = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        server
            .subject_alt_names
            .push(SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
        let key = KeyPair::generate().expect("server key");
        let cert = server.signed_by(&key, &issuer).expect("server certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            )
            .expect("server config");
        let config = Arc::new(config);

        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the receiver");
        let url = format!(
            "https://{}/hook",
            listener.local_addr().expect("receiver address")
        );
        let posts: Arc<Mutex<Vec<Post>>> = Arc::default();
        let refused = Arc::new(AtomicUsize::new(0));
        let expected = format!("Bearer {token}");
        {
            let (posts, refused) = (Arc::clone(&posts), Arc::clone(&refused));
            thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let (config, posts, refused, expected) = (
                        Arc::clone(&config),
                        Arc::clone(&posts),
                        Arc::clone(&refused),
                        expected.clone(),
                    );
                    thread::spawn(move || {
                        let conn = rustls::ServerConnection::new(config).expect("connection");
                        let tls = rustls::StreamOwned::new(conn, stream);
                        serve_tls(tls, &posts, &refused, &expected);
                    });
                }
            });
        }
        Self {
            url,
            ca_pem,
            posts,
            refused,
        }
    }

    fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Reads HTTP/1.1 POSTs (Content-Length bodies) from one TLS connection.
fn serve_tls(
    tls: rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>,
    posts: &Mutex<Vec<Post>>,
    refused: &AtomicUsize,
    expected: &str,
) {
    let mut reader = BufReader::new(tls);
    let mut first = true;
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(_) => {
                // The handshake happens at the first read: a client refusing our
                // certificate ends it here.
                if first {
                    refused.fetch_add(1, Ordering::SeqCst);
                }
                return;
            }
        }
        first = false;
        let (mut length, mut authorization) = (0usize, None);
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("authorization") {
                    authorization = Some(value.trim().to_owned());
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let allowed = authorization.as_deref() == Some(expected);
        posts.lock().unwrap_or_else(|e| e.into_inner()).push(Post {
            authorization,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        });
        let answer = if allowed {
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
        } else {
            "HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n"
        };
        let out = reader.get_mut();
        if out
            .write_all(answer.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return;
        }
    }
}

fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn https_webhook_trusts_the_given_ca_and_sends_the_token() {
    require_root();
    let token = "t0ken-for-the-test";
    let receiver = TlsReceiver::start(token);
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = file(dir.path(), "ca.pem", &receiver.ca_pem);
    // A Secret written with echo: the newline is not part of the token.
    let token_file = file(dir.path(), "token", &format!("{token}\n"));
    let (ca, token_file) = (ca.to_string_lossy(), token_file.to_string_lossy());
    let mut abba = Abba::start();
    let mut trusting = Daemon::start(&[
        "--webhook",
        &receiver.url,
        "--webhook-ca",
        &ca,
        "--webhook-token-file",
        &token_file,
    ]);
    // The system's roots do not include the CA made here.
    let mut untrusting = Daemon::start(&[
        "--webhook",
        &receiver.url,
        "--webhook-token-file",
        &token_file,
    ]);
    let lock = abba.deadlock();

    let pid = u64::from(abba.pid());
    let delivered = wait_until(Duration::from_secs(10), || {
        receiver
            .posts()
            .iter()
            .any(|p| str_of(&p.body, "/kind") == "deadlock" && u64_of(&p.body, "/pid") == pid)
    });
    assert!(
        delivered,
        "no deadlock event of abba (workers {} and {}) reached the https receiver:\n{}",
        lock.tid_a,
        lock.tid_b,
        trusting.dump(Some(&[abba.pid()]))
    );
    let posts = receiver.posts();
    assert!(
        posts
            .iter()
            .all(|p| p.authorization.as_deref() == Some(&format!("Bearer {token}"))),
        "every POST carries the token: {:?}",
        posts.iter().map(|p| &p.authorization).collect::<Vec<_>>()
    );

    wait_for_log(&untrusting, "not delivered", Duration::from_secs(10));
    let stderr = untrusting.stderr();
    assert!(
        stderr.to_lowercase().contains("certificate") || stderr.contains("UnknownIssuer"),
        "the refusal names the certificate:\n{stderr}"
    );
    assert!(
        receiver.refused.load(Ordering::SeqCst) >= 1,
        "the receiver saw the untrusting daemon's handshake fail"
    );
    trusting.stop();
    untrusting.stop();
}
