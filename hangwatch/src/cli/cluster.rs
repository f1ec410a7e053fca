//! `--all-nodes`: the same question to every hangwatch pod of the cluster, through the
//! Kubernetes API server's pod proxy (`/api/v1/namespaces/NS/pods/NAME:PORT/proxy/PATH`),
//! so that a laptop with a kubeconfig reaches daemons that listen on pod IPs only.
//!
//! The pods are the DaemonSet's (a label selector in its namespace); each is asked at once,
//! with a time limit, and one that cannot answer is reported beside the others' answers.
use std::time::Duration;

use clap::Args;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, Config, api::ListParams};
use serde_json::Value;

/// How long one pod may take to answer through the proxy.
const POD_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Ask every hangwatch pod of the cluster through the Kubernetes API server's pod proxy
    /// (credentials from KUBECONFIG or ~/.kube/config) and merge their answers, with a NODE
    /// column
    #[arg(long)]
    pub all_nodes: bool,

    /// With --all-nodes: the DaemonSet's namespace [default: hangwatch]
    #[arg(
        long,
        value_name = "NAMESPACE",
        default_value = "hangwatch",
        hide_default_value = true
    )]
    pub kube_namespace: String,

    /// With --all-nodes: the label selector of the DaemonSet's pods
    /// [default: app.kubernetes.io/name=hangwatch]
    #[arg(
        long,
        value_name = "SELECTOR",
        default_value = "app.kubernetes.io/name=hangwatch",
        hide_default_value = true
    )]
    pub kube_selector: String,

    /// With --all-nodes: the port of the daemon's API in its pod (`--listen`) [default: 9924]
    #[arg(
        long,
        value_name = "PORT",
        default_value_t = 9924,
        hide_default_value = true
    )]
    pub kube_port: u16,
}

/// One pod's answer, or why there is none.
#[derive(Debug)]
pub struct NodeAnswer {
    pub node: String,
    pub pod: String,
    pub answer: Result<Value, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot start the Kubernetes client's runtime")]
    Runtime(#[source] std::io::Error),
    #[error("no Kubernetes client configuration (a kubeconfig in KUBECONFIG or ~/.kube/config?)")]
    Config(#[source] kube::config::InferConfigError),
    #[error("cannot make a Kubernetes client from the kubeconfig")]
    Client(#[source] kube::Error),
    #[error("cannot list the hangwatch pods (namespace {namespace}, selector {selector})")]
    List {
        namespace: String,
        selector: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "no hangwatch pod in namespace {namespace} matches {selector} (is deploy/ applied? --kube-namespace, --kube-selector)"
    )]
    NoPods { namespace: String, selector: String },
}

/// GETs `path` (e.g. `/api/v1/hangs?kind=deadlock`) from every hangwatch pod.
pub fn get_all(args: &ClusterArgs, path: &str) -> Result<Vec<NodeAnswer>, ClusterError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ClusterError::Runtime)?;
    runtime.block_on(ask_every_pod(args, path))
}

async fn ask_every_pod(args: &ClusterArgs, path: &str) -> Result<Vec<NodeAnswer>, ClusterError> {
    let mut config = Config::infer().await.map_err(ClusterError::Config)?;
    // The API server answers 503 for a pod it cannot reach; kube's default policy retries
    // that 15 times with backoff. One pod down must cost one answer, not the whole list.
    config.default_retry = false;
    let client = Client::try_from(config).map_err(ClusterError::Client)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &args.kube_namespace);
    let listed = pods
        .list(&ListParams::default().labels(&args.kube_selector))
        .await
        .map_err(|source| ClusterError::List {
            namespace: args.kube_namespace.clone(),
            selector: args.kube_selector.clone(),
            source,
        })?;
    if listed.items.is_empty() {
        return Err(ClusterError::NoPods {
            namespace: args.kube_namespace.clone(),
            selector: args.kube_selector.clone(),
        });
    }
    let mut asks = tokio::task::JoinSet::new();
    let mut answers = Vec::new();
    for (order, pod) in listed.items.into_iter().enumerate() {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if phase != "Running" {
            answers.push((
                order,
                NodeAnswer {
                    node,
                    pod: name,
                    answer: Err(format!("the pod is {}", phase_or_unknown(&phase))),
                },
            ));
            continue;
        }
        let url = format!(
            "/api/v1/namespaces/{}/pods/{}:{}/proxy{path}",
            args.kube_namespace, name, args.kube_port
        );
        let client = client.clone();
        asks.spawn(async move {
            let answer = match tokio::time::timeout(POD_TIMEOUT, get_json(&client, &url)).await {
                Ok(answer) => answer,
                Err(_) => Err(format!("no answer within {POD_TIMEOUT:?}")),
            };
            (
                order,
                NodeAnswer {
                    node,
                    pod: name,
                    answer,
                },
            )
        });
    }
    while let Some(done) = asks.join_next().await {
        match done {
            Ok(answer) => answers.push(answer),
            Err(err) => tracing::warn!("a pod request task failed: {err}"),
        }
    }
    // The API server's order (stable), not the order the answers came in.
    answers.sort_by_key(|(order, _)| *order);
    Ok(answers.into_iter().map(|(_, a)| a).collect())
}

fn phase_or_unknown(phase: &str) -> &str {
    if phase.is_empty() {
        "not running"
    } else {
        phase
    }
}

async fn get_json(client: &Client, url: &str) -> Result<Value, String> {
    let request = ureq::http::Request::get(url)
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let text = client.request_text(request).await.map_err(|e| match e {
        // The API server's own words ("error trying to reach service: dial tcp ...").
        kube::Error::Api(status) => format!("HTTP {}: {}", status.code, status.message),
        other => other.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| format!("not JSON ({e})"))
}
