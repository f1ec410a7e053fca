//! A webhook receiver: a small HTTP server on loopback that records what the daemon POSTs.
use std::{
    io::{BufRead, BufReader, Write},
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

use super::{Received, Value};

/// How a [`WebhookReceiver`] treats requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiverMode {
    /// Reads each request and answers 200.
    Accept,
    /// Never accepts a connection (the kernel's backlog completes the handshake, so the
    /// client waits for an answer that never comes).
    NeverAnswer,
}

/// A tiny HTTP server on loopback that records the JSON bodies POSTed to it.
pub struct WebhookReceiver {
    pub url: String,
    bodies: Arc<(Mutex<Vec<Received>>, Condvar)>,
    _listener: Option<std::net::TcpListener>,
}

impl WebhookReceiver {
    pub fn start(mode: ReceiverMode) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a receiver");
        let addr = listener.local_addr().expect("receiver address");
        let url = format!("http://{addr}/hook");
        let bodies: Arc<(Mutex<Vec<Received>>, Condvar)> = Arc::default();
        if mode == ReceiverMode::NeverAnswer {
            return Self {
                url,
                bodies,
                _listener: Some(listener),
            };
        }
        let sink = Arc::clone(&bodies);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let sink = Arc::clone(&sink);
                thread::spawn(move || serve_connection(stream, &sink));
            }
        });
        Self {
            url,
            bodies,
            _listener: None,
        }
    }

    /// Every body received so far.
    pub fn received(&self) -> Vec<Received> {
        self.bodies
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until `done` holds for the bodies received; false on timeout (scaled).
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&[Received]) -> bool) -> bool {
        let (lock, cv) = &*self.bodies;
        let deadline = Instant::now() + super::scaled(timeout);
        let mut bodies = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if done(&bodies) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            bodies = cv
                .wait_timeout(bodies, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Reads HTTP/1.1 requests (Content-Length bodies) from one connection, answering 200.
fn serve_connection(stream: std::net::TcpStream, sink: &(Mutex<Vec<Received>>, Condvar)) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        if std::io::Read::read_exact(&mut reader, &mut body).is_err() {
            return;
        }
        let at = Instant::now();
        let value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        {
            let (lock, cv) = sink;
            lock.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Received { at, value });
            cv.notify_all();
        }
        let answer = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}
