//! HTTP clients of the daemon's listeners: TCP through ureq, the API's unix socket by hand;
//! `/metrics` scraped and parsed.
use std::time::Duration;

use super::Value;

/// An HTTP answer: status, body text, and the body as JSON when it is JSON.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub text: String,
    pub json: Value,
}

/// `method` `url` with a 10 s limit (scaled); panics when the server cannot be reached. `url` is
/// `http://...`, or `unix:/path/to/api.sock/api/v1/...` (a daemon's `endpoint()` and a
/// path) for the API socket.
pub fn http(method: &str, url: &str) -> Answer {
    http_with(method, url, &[])
}

/// [`http`] with request headers.
pub fn http_with(method: &str, url: &str, headers: &[(&str, &str)]) -> Answer {
    if let Some(rest) = url.strip_prefix("unix:") {
        return unix_http(method, rest, headers);
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(super::scaled(Duration::from_secs(10))))
        .build()
        .into();
    let response = match method {
        "GET" => {
            let mut request = agent.get(url);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            request.call()
        }
        "POST" => agent.post(url).send("{}"),
        "PUT" => agent.put(url).send("{}"),
        "DELETE" => agent.delete(url).call(),
        other => panic!("unsupported method {other}"),
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let text = response
        .into_body()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()
        .unwrap_or_else(|e| panic!("{method} {url}: reading the body: {e}"));
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer { status, text, json }
}

/// One HTTP/1.0 request over a unix socket (`/path/api.sock/api/v1/...`): the server
/// closes the connection after its answer.
fn unix_http(method: &str, target: &str, headers: &[(&str, &str)]) -> Answer {
    use std::io::{Read as _, Write as _};
    let split = target
        .find(".sock")
        .map_or(target.len(), |i| i + ".sock".len());
    let (socket, path) = target.split_at(split);
    let path = if path.is_empty() { "/" } else { path };
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("{method} {path}: cannot connect to {socket}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let body = if matches!(method, "POST" | "PUT") {
        "{}"
    } else {
        ""
    };
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream
        .write_all(request.as_bytes())
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .unwrap_or_else(|e| panic!("{method} {path}: reading the answer: {e}"));
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: not an HTTP answer: {answer}"));
    let text = answer
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer { status, text, json }
}

/// GET that must answer 200; returns the body as JSON (Null if not JSON).
pub fn get_ok(url: &str) -> Answer {
    let answer = http("GET", url);
    assert_eq!(answer.status, 200, "GET {url}: {}", answer.text);
    answer
}

/// One scrape of the daemon's `/metrics` at `endpoint`, parsed.
pub fn scrape(endpoint: &str) -> prometheus_parse::Scrape {
    let answer = get_ok(&format!("{endpoint}/metrics"));
    prometheus_parse::Scrape::parse(answer.text.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{}", answer.text))
}

/// The value of the sample `name` whose labels include `labels`; None if there is none.
pub fn sample(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
}

/// As [`sample`], and a sample must be there.
pub fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(scrape, name, labels).unwrap_or_else(|| {
        let names: Vec<&str> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
        panic!("no sample {name}{labels:?}; the scrape has {names:?}")
    })
}
