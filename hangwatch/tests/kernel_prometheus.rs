//! End to end, as in a cluster but on loopback: Debian's Prometheus scrapes a running
//! hangwatch every second and evaluates the alert rules of deploy/ (the PrometheusRule's
//! spec, `for:` shortened); a real ABBA deadlock must make `HangwatchDeadlock` fire, read
//! back through Prometheus's HTTP API, and resolve when the process is killed.
//!
//! The daemon runs with exactly the capabilities the DaemonSet adds (deploy/core/
//! daemonset.yaml), not as full root: the deadlock's report must still carry symbolized
//! kernel and user stacks, which is what proves those capabilities are enough.

mod common;

use std::{
    fs,
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::Duration,
};

use self::common::*;

/// A Prometheus server in a temporary directory, killed by pid on drop.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (HOST:PORT) every second as job "hangwatch",
    /// evaluating `rules` every second; waits until it is ready.
    fn start(target: &str, rules: &str) -> Self {
        let binary = find_tool("prometheus").unwrap_or_else(|| {
            panic!("prometheus is missing: `cargo xtask setup` installs Debian's package")
        });
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join("hangwatch.rules.yaml"), rules).expect("write rules");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
             rule_files: [hangwatch.rules.yaml]\n\
             scrape_configs:\n  - job_name: hangwatch\n    static_configs:\n      - targets: ['{target}']\n"
        );
        let config_file = dir.path().join("prometheus.yml");
        fs::write(&config_file, config).expect("write prometheus.yml");
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting prometheus: {e}"));
        let prometheus = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let ready = wait_until(Duration::from_secs(30), || {
            reachable(&format!("{}/-/ready", prometheus.url))
        });
        assert!(ready, "prometheus did not become ready within 30 s");
        prometheus
    }

    /// The alerts Prometheus holds now (pending or firing).
    fn alerts(&self) -> Vec<Value> {
        let answer = get_ok(&format!("{}/api/v1/alerts", self.url));
        answer.json["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The result vector of an instant query.
    fn query(&self, promql: &str) -> Vec<Value> {
        let mut url = format!("{}/api/v1/query?query=", self.url);
        for b in promql.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                url.push(char::from(b));
            } else {
                url.push_str(&format!("%{b:02X}"));
            }
        }
        get_ok(&url).json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        signal(self.child.id(), libc::SIGTERM);
        if wait_bounded(&mut self.child, Duration::from_secs(10)).is_none() {
            signal(self.child.id(), libc::SIGKILL);
            wait_bounded(&mut self.child, Duration::from_secs(5));
        }
    }
}

/// Whether GET `url` answers 200 (false while the server is not listening yet).
fn reachable(url: &str) -> bool {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    agent
        .get(url)
        .call()
        .is_ok_and(|r| r.status().as_u16() == 200)
}

/// A port free right now on loopback (the kernel picks it; Prometheus binds it next).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `capabilities.add` of the DaemonSet's container, as written in deploy/.
fn daemonset_capabilities() -> Vec<String> {
    let text =
        fs::read_to_string(deploy_dir().join("core/daemonset.yaml")).expect("read daemonset.yaml");
    let ds: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("valid YAML");
    let add =
        &ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"];
    let caps: Vec<String> = add
        .as_sequence()
        .unwrap_or_else(|| panic!("no capabilities.add in daemonset.yaml"))
        .iter()
        .map(|c| c.as_str().expect("capability names").to_owned())
        .collect();
    assert!(
        !caps.iter().any(|c| c == "SYS_ADMIN"),
        "the DaemonSet must not need CAP_SYS_ADMIN"
    );
    caps
}

fn firing<'a>(alerts: &'a [Value], name: &str, comm: &str) -> Option<&'a Value> {
    alerts.iter().find(|a| {
        str_of(a, "/labels/alertname") == name
            && str_of(a, "/labels/comm") == comm
            && str_of(a, "/state") == "firing"
    })
}

#[test]
#[ignore = "needs root: loads BPF programs"]
fn deadlock_alert_fires_in_prometheus() {
    require_root();
    // Its own name, so that an abba deadlocked by another test running at the same time
    // (the daemon sees the whole machine) cannot answer for this one.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("abba_prom");
    fs::copy(compile("abba"), &path).expect("copy abba");
    let comm = "abba_prom";
    let mut abba = Abba {
        program: Program::start(&path, &["hold-forever"]),
        cmdline: vec![path.to_string_lossy().into_owned()],
        path: path.clone(),
    };
    abba.program.expect_number("pid", Duration::from_secs(5));

    let caps = daemonset_capabilities();
    eprintln!("daemon capabilities (from the DaemonSet): {caps:?}");
    let daemon = Daemon::start_with_capabilities(&caps, &[]);
    let endpoint = daemon.metrics_endpoint();
    let target = endpoint.trim_start_matches("http://");
    let prometheus = Prometheus::start(target, &prometheus_rules_file(Some("1s")));

    let scraped = wait_until(Duration::from_secs(20), || {
        !prometheus.query("up{job=\"hangwatch\"} == 1").is_empty()
    });
    assert!(scraped, "prometheus never scraped hangwatch at {target}");
    assert!(
        firing(&prometheus.alerts(), "HangwatchDeadlock", comm).is_none(),
        "alert before the deadlock: {:?}",
        prometheus.alerts()
    );

    let d = abba.deadlock();
    let pid = abba.pid();
    let hang = daemon.wait_for_event("deadlock for abba_prom", Duration::from_secs(5), |v| {
        str_of(v, "/event") == "hang"
            && str_of(v, "/kind") == "deadlock"
            && u64_of(v, "/pid") == u64::from(pid)
    });
    // What the DaemonSet's capabilities must allow: the wait-for cycle (futex owners read
    // from the process's memory), symbolized user stacks (process_vm_readv, the binary
    // through /proc/PID), symbolized kernel stacks (kallsyms addresses).
    let v = &hang.value;
    assert_eq!(
        v["cycle"].as_array().map(Vec::len),
        Some(2),
        "both workers in the cycle: {v}"
    );
    for member in v["cycle"].as_array().into_iter().flatten() {
        assert!(
            str_of(member, "/blocked_here").contains("abba.c"),
            "user stack symbolized with the DaemonSet's capabilities: {member}"
        );
    }
    let kernel = kernel_symbols(v);
    assert!(
        kernel.iter().any(|s| s.contains("futex")),
        "kernel stack symbolized with the DaemonSet's capabilities: {kernel:?}"
    );

    let mut alerts = Vec::new();
    let fired = wait_until(Duration::from_secs(20), || {
        alerts = prometheus.alerts();
        firing(&alerts, "HangwatchDeadlock", comm).is_some()
    });
    assert!(
        fired,
        "HangwatchDeadlock for {comm} not firing 20 s after the deadlock formed ({:?} ago); alerts: {alerts:#?}",
        d.at.elapsed()
    );
    let alert = firing(&alerts, "HangwatchDeadlock", comm).expect("firing");
    eprintln!("firing after {:?}: {alert}", d.at.elapsed());
    assert_eq!(str_of(alert, "/labels/severity"), "critical", "{alert}");
    assert_eq!(
        str_of(alert, "/annotations/summary"),
        format!("Deadlock in {comm}"),
        "{alert}"
    );
    assert_eq!(
        str_of(alert, "/value"),
        "1e+00",
        "one deadlock episode: {alert}"
    );
    // The daemon itself is healthy: none of its own alerts fire.
    for name in [
        "HangwatchDown",
        "HangwatchAbsent",
        "HangwatchScanStalled",
        "HangwatchEventsDropped",
        "HangwatchProbeStateUnavailable",
    ] {
        assert!(
            !alerts
                .iter()
                .any(|a| str_of(a, "/labels/alertname") == name && str_of(a, "/state") == "firing"),
            "{name} fires: {alerts:#?}"
        );
    }

    // Killed, the episode resolves, the series goes stale, the alert goes away.
    abba.program.kill();
    let resolved = wait_until(Duration::from_secs(20), || {
        alerts = prometheus.alerts();
        !alerts.iter().any(|a| {
            str_of(a, "/labels/alertname") == "HangwatchDeadlock"
                && str_of(a, "/labels/comm") == comm
        })
    });
    assert!(resolved, "the alert outlived the deadlock: {alerts:#?}");
}
