//! A Kubernetes API server and cgroups for the attribution and cluster tests
//! (`kernel_kube.rs`): [`ApiServer`] answers the pod list and watch, the token Secret and
//! the pod proxy over plain HTTP, with the RBAC of the reader Role; [`TestCgroups`] makes
//! cgroups in the shapes kubelet and the runtimes make and removes them on drop.
use std::{
    fs,
    io::{BufRead, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use super::http_with;

/// The cluster API's token, as the daemon's token file and the Secret hold it.
pub const CLUSTER_TOKEN: &str = "hangwatch-test-token-0123456789ab";
/// The same, base64 as in a Secret's `data`.
pub const CLUSTER_TOKEN_BASE64: &str = "aGFuZ3dhdGNoLXRlc3QtdG9rZW4tMDEyMzQ1Njc4OWFi";
/// The bearer token of the kubeconfig's user whom RBAC grants the hangwatch-reader Role.
pub const READER: &str = "test-token";

/// What the test API server answers.
#[derive(Clone, Default)]
pub struct Routes {
    /// RBAC of the reader Role: the bearer tokens allowed to read the token Secret and to
    /// use the pod proxy (others get 403, as the API server answers a user RBAC denies).
    pub readers: Vec<&'static str>,
    /// `/api/v1/pods`: the node watch (list, then a watch held open).
    pub node_pods: Option<&'static str>,
    /// `/api/v1/namespaces/hangwatch/pods`: the DaemonSet's pods.
    pub hangwatch_pods: Option<&'static str>,
    /// Pod proxy: pod name -> the daemon its `NAME:9924/proxy/...` reaches (`None`: the
    /// API server cannot reach the pod and answers 503, as it does when the dial fails).
    pub proxies: Vec<(&'static str, Option<String>)>,
}

/// A minimal API server for the routes above. Records each request line and its
/// Authorization header.
pub struct ApiServer {
    pub url: String,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl ApiServer {
    pub fn start(routes: Routes) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        listener.set_nonblocking(true).expect("nonblocking");
        {
            let requests = Arc::clone(&requests);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let requests = Arc::clone(&requests);
                            let stop = Arc::clone(&stop);
                            let routes = routes.clone();
                            thread::spawn(move || serve(stream, &routes, &requests, &stop));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(20)),
                    }
                }
            });
        }
        Self {
            url,
            requests,
            stop,
        }
    }

    /// Every request so far: its request line and `[Authorization header]`.
    pub fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A kubeconfig for this server, with the reader's bearer token, written into `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> String {
        self.kubeconfig_for(dir, READER)
    }

    /// A kubeconfig for this server with the bearer token `token`.
    pub fn kubeconfig_for(&self, dir: &Path, token: &str) -> String {
        let path = dir.join(format!("kubeconfig-{token}"));
        fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n\
                 users:\n- name: test\n  user:\n    token: {token}\n\
                 contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
                 current-context: test\n",
                self.url
            ),
        )
        .expect("write kubeconfig");
        path.to_string_lossy().into_owned()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn respond(out: &mut TcpStream, status: &str, body: &str) {
    let _ = write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = out.flush();
}

fn status_json(code: u16, reason: &str, message: &str) -> String {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    })
    .to_string()
}

/// One connection: HTTP/1.1 keep-alive, GETs only.
fn serve(stream: TcpStream, routes: &Routes, requests: &Mutex<Vec<String>>, stop: &AtomicBool) {
    stream.set_nonblocking(false).ok();
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut authorization = String::new();
        let mut cluster_token = None;
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
            let lower = header.to_ascii_lowercase();
            if lower.starts_with("authorization:") {
                authorization = header["authorization:".len()..].trim().to_owned();
            } else if lower.starts_with("x-hangwatch-token:") {
                cluster_token = Some(header["x-hangwatch-token:".len()..].trim().to_owned());
            } else if let Some(n) = lower.strip_prefix("content-length:") {
                length = n.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let request_line = request_line.trim_end().to_owned();
        requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{request_line} [{authorization}]"));
        let target = request_line.split(' ').nth(1).unwrap_or("").to_owned();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let watch = query
            .split('&')
            .any(|p| p == "watch=true" || p == "watch=1");
        let proxied = path
            .strip_prefix("/api/v1/namespaces/hangwatch/pods/")
            .and_then(|rest| rest.split_once(":9925/proxy"));
        // RBAC of the reader Role: the token Secret and the pod proxy.
        let reader = routes
            .readers
            .iter()
            .any(|t| authorization == format!("Bearer {t}"));
        let guarded =
            proxied.is_some() || path.starts_with("/api/v1/namespaces/hangwatch/secrets/");
        if guarded && !reader {
            let (resource, verb) = if proxied.is_some() {
                ("pods/proxy", "get")
            } else {
                ("secrets", "get")
            };
            respond(
                &mut out,
                "403 Forbidden",
                &status_json(
                    403,
                    "Forbidden",
                    &format!(
                        "{resource} is forbidden: User \"denied\" cannot {verb} resource \"{resource}\" in API group \"\" in the namespace \"hangwatch\""
                    ),
                ),
            );
            continue;
        }
        if let (Some(pods), "/api/v1/pods", false) = (routes.node_pods, path, watch) {
            respond(&mut out, "200 OK", pods);
        } else if let (Some(_), "/api/v1/pods", true) = (routes.node_pods, path, watch) {
            // No change to report: hold the stream open (as the API server does until its
            // timeout) and end it when the test is done.
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            let _ = out.flush();
            while !stop.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(50));
            }
            let _ = write!(out, "0\r\n\r\n");
            return;
        } else if let (Some(pods), "/api/v1/namespaces/hangwatch/pods") =
            (routes.hangwatch_pods, path)
        {
            respond(&mut out, "200 OK", pods);
        } else if path == "/api/v1/namespaces/hangwatch/secrets/hangwatch-api-token" {
            let secret = serde_json::json!({
                "kind": "Secret", "apiVersion": "v1",
                "metadata": {"name": "hangwatch-api-token", "namespace": "hangwatch"},
                "type": "Opaque",
                "data": {"token": CLUSTER_TOKEN_BASE64},
            });
            respond(&mut out, "200 OK", &secret.to_string());
        } else if let Some((pod, rest)) = proxied {
            match routes.proxies.iter().find(|(name, _)| *name == pod) {
                Some((_, Some(daemon))) => {
                    let url = if query.is_empty() {
                        format!("{daemon}{rest}")
                    } else {
                        format!("{daemon}{rest}?{query}")
                    };
                    // As the API server does: the user's Authorization stays behind (it
                    // was for the API server), the other headers go along.
                    let headers: Vec<(&str, &str)> = cluster_token
                        .as_deref()
                        .map(|t| ("X-Hangwatch-Token", t))
                        .into_iter()
                        .collect();
                    let answer = http_with("GET", &url, &headers);
                    respond(&mut out, &format!("{} OK", answer.status), &answer.text);
                }
                Some((_, None)) => respond(
                    &mut out,
                    "503 Service Unavailable",
                    &status_json(
                        503,
                        "ServiceUnavailable",
                        "error trying to reach service: dial tcp 10.244.2.7:9924: connect: connection refused",
                    ),
                ),
                None => respond(
                    &mut out,
                    "404 Not Found",
                    &status_json(404, "NotFound", &format!("pods \"{pod}\" not found")),
                ),
            }
        } else {
            respond(
                &mut out,
                "404 Not Found",
                &status_json(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            );
        }
    }
}

/// The mount point of a cgroup hierarchy: cgroup2, or the v1 one with `option` (e.g.
/// `name=systemd`).
pub fn cgroup_mount(fstype: &str, option: Option<&str>) -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let (point, kind, options) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
        let matches = *kind == fstype && option.is_none_or(|o| options.split(',').any(|x| x == o));
        matches.then(|| PathBuf::from(point))
    })
}

/// Cgroups made by the test under `<mount>/<top>`, removed on drop: any process still in
/// them is moved back to the hierarchy's root first, then the directories are removed
/// deepest first.
#[derive(Default)]
pub struct TestCgroups {
    tops: Vec<(PathBuf, PathBuf)>,
}

impl TestCgroups {
    /// Makes `<mount>/<relative>` (and its parents), returns its path.
    pub fn make(&mut self, mount: &Path, top: &str, relative: &str) -> PathBuf {
        let top_dir = mount.join(top);
        if !self.tops.iter().any(|(_, t)| *t == top_dir) {
            self.tops.push((mount.to_path_buf(), top_dir.clone()));
        }
        let dir = top_dir.join(relative.trim_start_matches('/'));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        dir
    }

    pub fn enter(dir: &Path, pid: u32) {
        fs::write(dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", dir.display()));
    }
}

impl Drop for TestCgroups {
    fn drop(&mut self) {
        for (mount, top) in self.tops.drain(..) {
            let mut dirs = Vec::new();
            collect_dirs(&top, &mut dirs);
            // Deepest first.
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for dir in &dirs {
                if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                    for pid in procs.split_whitespace() {
                        let _ = fs::write(mount.join("cgroup.procs"), pid);
                    }
                }
                let mut removed = false;
                for _ in 0..50 {
                    if fs::remove_dir(dir).is_ok() || !dir.exists() {
                        removed = true;
                        break;
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                if !removed {
                    eprintln!(
                        "warning: could not remove the test cgroup {}",
                        dir.display()
                    );
                }
            }
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_path_buf());
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&entry.path(), out);
        }
    }
}
