//! The pods of this node, from the Kubernetes API: pod UID and container id -> namespace, pod
//! name, container name and the pod's labels.
//!
//! One watch (kube-rs's `watcher`: list, then watch from that resourceVersion, relist after
//! a gap, with backoff) on `/api/v1/pods` with the field selector `spec.nodeName=<node>`, so
//! the API server sends this node's pods only and RBAC needs get/list/watch on pods only.
//! It runs on its own thread with its own small runtime: the scan never waits for the API
//! server, it reads whatever the index holds (a pod not yet seen gives ids without names).
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
    thread,
    time::Duration,
};

use futures_util::TryStreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};
use serde::Serialize;

use super::container::ContainerRef;

/// A container's place in Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodRef {
    pub namespace: String,
    pub pod: String,
    /// The container's name in the pod spec; `None` for a process of the pod that is in
    /// no container the pod's status lists (the sandbox, a container just started).
    pub container: Option<String>,
    /// The pod's labels, for selecting workloads (not put in events or metrics).
    #[serde(skip)]
    pub labels: BTreeMap<String, String>,
}

/// What the index keeps of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodEntry {
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
    /// Container id (without its `containerd://` scheme) -> container name, from every
    /// container status (init and ephemeral ones included).
    containers: HashMap<String, String>,
}

/// This node's pods, shared by the watcher (writer) and the scan (reader).
#[derive(Debug, Default)]
pub struct PodIndex {
    inner: RwLock<Pods>,
}

#[derive(Debug, Default)]
struct Pods {
    by_uid: HashMap<String, PodEntry>,
    /// Container id -> pod UID, for processes whose cgroup names a container but no pod.
    uid_by_container: HashMap<String, String>,
}

impl Pods {
    fn insert(&mut self, uid: String, entry: PodEntry) {
        self.remove(&uid);
        for id in entry.containers.keys() {
            self.uid_by_container.insert(id.clone(), uid.clone());
        }
        self.by_uid.insert(uid, entry);
    }

    fn remove(&mut self, uid: &str) {
        if let Some(old) = self.by_uid.remove(uid) {
            for id in old.containers.keys() {
                self.uid_by_container.remove(id);
            }
        }
    }
}

impl PodIndex {
    /// The pod and container of a process, when its cgroup named them and the pod is known.
    pub fn lookup(&self, container: &ContainerRef) -> Option<PodRef> {
        let pods = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let uid = match (&container.pod_uid, &container.container_id) {
            (Some(uid), _) => uid.clone(),
            (None, Some(id)) => pods.uid_by_container.get(id)?.clone(),
            (None, None) => return None,
        };
        let entry = pods.by_uid.get(&uid)?;
        Some(PodRef {
            namespace: entry.namespace.clone(),
            pod: entry.name.clone(),
            container: container
                .container_id
                .as_ref()
                .and_then(|id| entry.containers.get(id).cloned()),
            labels: entry.labels.clone(),
        })
    }

    pub fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_uid
            .len()
    }

    fn apply(&self, pod: &Pod) {
        if let Some((uid, entry)) = entry_of(pod) {
            self.inner
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(uid, entry);
        }
    }

    fn delete(&self, pod: &Pod) {
        if let Some(uid) = &pod.metadata.uid {
            self.inner
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(uid);
        }
    }

    /// Replaces everything with a complete list (the first one, or a relist after the
    /// watch could not resume: pods deleted meanwhile must go).
    fn replace(&self, listed: Vec<Pod>) {
        let mut fresh = Pods::default();
        for pod in &listed {
            if let Some((uid, entry)) = entry_of(pod) {
                fresh.insert(uid, entry);
            }
        }
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = fresh;
    }
}

fn entry_of(pod: &Pod) -> Option<(String, PodEntry)> {
    let uid = pod.metadata.uid.clone()?;
    let mut containers = HashMap::new();
    if let Some(status) = &pod.status {
        let statuses = [
            &status.container_statuses,
            &status.init_container_statuses,
            &status.ephemeral_container_statuses,
        ];
        for s in statuses.into_iter().flatten().flatten() {
            if let Some(id) = s.container_id.as_deref().and_then(strip_scheme) {
                containers.insert(id.to_owned(), s.name.clone());
            }
        }
    }
    Some((
        uid,
        PodEntry {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            containers,
        },
    ))
}

/// `containerd://<id>`, `cri-o://<id>`, `docker://<id>` -> `<id>`.
fn strip_scheme(container_id: &str) -> Option<&str> {
    container_id
        .split_once("://")
        .map(|(_, id)| id)
        .filter(|id| !id.is_empty())
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot start the pod watcher thread")]
    Thread(#[source] std::io::Error),
    #[error("cannot start the pod watcher's runtime")]
    Runtime(#[source] std::io::Error),
}

/// Starts watching the pods of `node` (credentials: `KUBECONFIG` or `~/.kube/config`, else
/// the pod's service account). Errors after the start (no credentials, API server down,
/// RBAC) are logged and retried with backoff: attribution waits, detection goes on.
pub fn watch_node(node: String) -> Result<Arc<PodIndex>, WatchError> {
    let index = Arc::new(PodIndex::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(WatchError::Runtime)?;
    let writer = Arc::clone(&index);
    thread::Builder::new()
        .name("hangwatch-pods".into())
        .spawn(move || runtime.block_on(run(node, writer)))
        .map_err(WatchError::Thread)?;
    Ok(index)
}

/// How long to wait before trying again to build a client (no credentials yet, a bad
/// kubeconfig): the watcher's own backoff covers the API calls.
const CLIENT_RETRY: Duration = Duration::from_secs(10);

async fn run(node: String, index: Arc<PodIndex>) {
    let client = loop {
        match Client::try_default().await {
            Ok(client) => break client,
            Err(err) => {
                tracing::warn!(
                    "pod attribution: no Kubernetes client ({err}); retrying in {CLIENT_RETRY:?}"
                );
                tokio::time::sleep(CLIENT_RETRY).await;
            }
        }
    };
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
    let mut listing: Vec<Pod> = Vec::new();
    let mut failing = false;
    loop {
        match stream.try_next().await {
            Ok(Some(event)) => {
                if failing {
                    tracing::info!("pod attribution: the pod watch works again");
                    failing = false;
                }
                match event {
                    watcher::Event::Init => listing.clear(),
                    watcher::Event::InitApply(pod) => listing.push(pod),
                    watcher::Event::InitDone => {
                        index.replace(std::mem::take(&mut listing));
                        tracing::info!(
                            "pod attribution: {} pods on node {node} (synced)",
                            index.len()
                        );
                    }
                    watcher::Event::Apply(pod) => index.apply(&pod),
                    watcher::Event::Delete(pod) => index.delete(&pod),
                }
            }
            Ok(None) => {
                tracing::warn!("pod attribution: the pod watch ended");
                return;
            }
            Err(err) => {
                // The stream backs off and retries by itself; say it once per outage.
                if !failing {
                    tracing::warn!("pod attribution: watching the pods of {node} failed: {err}");
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, ns: &str, name: &str, containers: &[(&str, &str)]) -> Pod {
        let statuses: Vec<serde_json::Value> = containers
            .iter()
            .map(|(name, id)| {
                serde_json::json!({
                    "name": name, "containerID": id, "image": "x", "imageID": "",
                    "ready": true, "restartCount": 0
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"uid": uid, "namespace": ns, "name": name, "labels": {"app": name}},
            "status": {"containerStatuses": statuses},
        }))
        .expect("a pod")
    }

    fn by(uid: Option<&str>, id: Option<&str>) -> ContainerRef {
        ContainerRef {
            container_id: id.map(str::to_owned),
            pod_uid: uid.map(str::to_owned),
        }
    }

    #[test]
    fn looks_up_by_pod_uid_and_container_id() {
        let index = PodIndex::default();
        index.replace(vec![pod(
            "u1",
            "payments",
            "api-7f9c",
            &[("web", "containerd://aaa"), ("sidecar", "containerd://bbb")],
        )]);
        let found = index.lookup(&by(Some("u1"), Some("aaa"))).expect("found");
        assert_eq!(
            (
                found.namespace.as_str(),
                found.pod.as_str(),
                found.container.as_deref()
            ),
            ("payments", "api-7f9c", Some("web"))
        );
        assert_eq!(
            found.labels.get("app").map(String::as_str),
            Some("api-7f9c")
        );
        // A container id alone (a cgroup without the pod's slice).
        assert_eq!(
            index
                .lookup(&by(None, Some("bbb")))
                .and_then(|p| p.container),
            Some("sidecar".into())
        );
        // The pod's sandbox or a container not in the status yet.
        let sandbox = index.lookup(&by(Some("u1"), Some("ccc"))).expect("pod");
        assert_eq!(sandbox.container, None);
        assert_eq!(index.lookup(&by(Some("u2"), None)), None);
        assert_eq!(index.lookup(&by(None, None)), None);
    }

    #[test]
    fn updates_deletes_and_relists() {
        let index = PodIndex::default();
        index.apply(&pod("u1", "ns", "a", &[("c", "cri-o://aaa")]));
        // A restart gives the container a new id.
        index.apply(&pod("u1", "ns", "a", &[("c", "cri-o://bbb")]));
        assert_eq!(index.lookup(&by(None, Some("aaa"))), None);
        assert!(index.lookup(&by(None, Some("bbb"))).is_some());
        index.delete(&pod("u1", "ns", "a", &[]));
        assert_eq!(index.lookup(&by(Some("u1"), None)), None);
        assert_eq!(index.lookup(&by(None, Some("bbb"))), None);
        // A relist drops what it does not list.
        index.apply(&pod("u2", "ns", "b", &[]));
        index.replace(vec![pod("u3", "ns", "c", &[])]);
        assert_eq!(index.lookup(&by(Some("u2"), None)), None);
        assert_eq!(index.len(), 1);
    }
}
