//! `--all-nodes` and `--node`: the same question to every hangwatch pod of the cluster (or
//! to the one on a node), through the
//! Kubernetes API server's pod proxy (`/api/v1/namespaces/NS/pods/NAME:PORT/proxy/PATH`),
//! so that a laptop with a kubeconfig reaches daemons that listen on pod IPs only.
//!
//! Each pod's cluster listener answers only requests that carry the cluster token, read
//! here from its Secret: Kubernetes RBAC decides who may ask (`get` on that Secret and on
//! `pods/proxy`), and the CLI says which grant is missing when it is refused
//! (deploy/README.md, "Who can read the API").
//! The pods are the DaemonSet's (a label selector in its namespace); each is asked at once,
//! with a time limit, and one that cannot answer is reported beside the others' answers.
use std::time::Duration;

use clap::Args;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{Api, Client, Config, api::ListParams};
use serde_json::Value;

/// How long one pod may take to answer through the proxy.
const POD_TIMEOUT: Duration = Duration::from_secs(15);

/// `list`'s cluster flags: every node, or one.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Ask every hangwatch pod of the cluster through the Kubernetes API server's pod proxy
    /// (credentials from KUBECONFIG or ~/.kube/config) and merge their answers, with a NODE
    /// column
    #[arg(long, conflicts_with = "node")]
    pub all_nodes: bool,

    #[command(flatten)]
    pub node: NodeArgs,
}

/// The cluster flags of the commands about one node's processes (`show`, `threads`, and
/// `list --node`): a pid or an episode is one node's, so they ask that node's pod.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// Ask the hangwatch pod of this Kubernetes node, through the API server's pod proxy
    /// as --all-nodes does
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,

    #[command(flatten)]
    pub kube: KubeArgs,
}

/// Where the DaemonSet's pods and their token are.
#[derive(Debug, Clone, Args)]
pub struct KubeArgs {
    /// With --all-nodes or --node: the DaemonSet's namespace [default: hangwatch]
    #[arg(
        long,
        value_name = "NAMESPACE",
        default_value = "hangwatch",
        hide_default_value = true
    )]
    pub kube_namespace: String,

    /// With --all-nodes or --node: the label selector of the DaemonSet's pods
    /// [default: app.kubernetes.io/name=hangwatch]
    #[arg(
        long,
        value_name = "SELECTOR",
        default_value = "app.kubernetes.io/name=hangwatch",
        hide_default_value = true
    )]
    pub kube_selector: String,

    /// With --all-nodes or --node: the port of the daemon's cluster API in its pod
    /// (`--cluster-api-listen`) [default: 9925]
    #[arg(
        long,
        value_name = "PORT",
        default_value_t = 9925,
        hide_default_value = true
    )]
    pub kube_port: u16,

    /// With --all-nodes or --node: the Secret (in --kube-namespace) whose `token` key the
    /// cluster API asks for [default: hangwatch-api-token]
    #[arg(
        long,
        value_name = "NAME",
        default_value = "hangwatch-api-token",
        hide_default_value = true
    )]
    pub kube_token_secret: String,
}

/// What RBAC must grant a user of `--all-nodes` (deploy/core/rbac-reader.yaml).
const GRANT: &str = "bind your user to the hangwatch-reader Role (deploy/core/rbac-reader.yaml: get/list pods, get pods/proxy and get the token Secret in the hangwatch namespace)";

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
    #[error("the Kubernetes API refused {what}: {message}; {GRANT}")]
    Forbidden { what: String, message: String },
    #[error(
        "no Secret {namespace}/{name} with a `token` key: the cluster API is off until it exists (deploy/README.md, \"Who can read the API\")"
    )]
    NoToken { namespace: String, name: String },
    #[error("cannot read the Secret {namespace}/{name}")]
    Token {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "no hangwatch pod in namespace {namespace} matches {selector} (is deploy/ applied? --kube-namespace, --kube-selector)"
    )]
    NoPods { namespace: String, selector: String },
    #[error(
        "no hangwatch pod in namespace {namespace} matching {selector} runs on node {node} (`kubectl get nodes` names them)"
    )]
    NoPodOnNode {
        namespace: String,
        selector: String,
        node: String,
    },
}

/// GETs `path` (e.g. `/api/v1/hangs?kind=deadlock`) from every hangwatch pod, or from the
/// one on `node`.
pub fn get_all(
    args: &KubeArgs,
    node: Option<&str>,
    path: &str,
) -> Result<Vec<NodeAnswer>, ClusterError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ClusterError::Runtime)?;
    runtime.block_on(ask_every_pod(args, node, path))
}

/// GETs `path` from the hangwatch pod of `node`: its answer, or why there is none.
pub fn get_one(args: &KubeArgs, node: &str, path: &str) -> anyhow::Result<Value> {
    let answer = get_all(args, Some(node), path)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no hangwatch pod answered for node {node}"))?;
    answer.answer.map_err(|error| {
        anyhow::anyhow!(
            "node {} (pod {}) did not answer: {error}",
            answer.node,
            answer.pod
        )
    })
}

async fn ask_every_pod(
    args: &KubeArgs,
    node: Option<&str>,
    path: &str,
) -> Result<Vec<NodeAnswer>, ClusterError> {
    let mut config = Config::infer().await.map_err(ClusterError::Config)?;
    // The API server answers 503 for a pod it cannot reach; kube's default policy retries
    // that 15 times with backoff. One pod down must cost one answer, not the whole list.
    config.default_retry = false;
    let client = Client::try_from(config).map_err(ClusterError::Client)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &args.kube_namespace);
    let mut params = ListParams::default().labels(&args.kube_selector);
    if let Some(node) = node {
        params = params.fields(&format!("spec.nodeName={node}"));
    }
    let mut listed = pods
        .list(&params)
        .await
        .map_err(|source| match forbidden(&source) {
            Some(message) => ClusterError::Forbidden {
                what: format!("listing the pods of namespace {}", args.kube_namespace),
                message,
            },
            None => ClusterError::List {
                namespace: args.kube_namespace.clone(),
                selector: args.kube_selector.clone(),
                source,
            },
        })?;
    let token = cluster_token(&client, args).await?;
    if let Some(node) = node {
        // The field selector asks the API server; this keeps the answer right even where
        // a proxy in between drops it.
        listed
            .items
            .retain(|pod| pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node));
        if listed.items.is_empty() {
            return Err(ClusterError::NoPodOnNode {
                namespace: args.kube_namespace.clone(),
                selector: args.kube_selector.clone(),
                node: node.to_owned(),
            });
        }
    }
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
        let token = token.clone();
        asks.spawn(async move {
            let ask = get_json(&client, &url, &token);
            let answer = match tokio::time::timeout(POD_TIMEOUT, ask).await {
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

/// The cluster API's token, from its Secret.
async fn cluster_token(client: &Client, args: &KubeArgs) -> Result<String, ClusterError> {
    let (namespace, name) = (&args.kube_namespace, &args.kube_token_secret);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let no_token = || ClusterError::NoToken {
        namespace: namespace.clone(),
        name: name.clone(),
    };
    let secret = match secrets.get(name).await {
        Ok(secret) => secret,
        Err(kube::Error::Api(status)) if status.code == 404 => return Err(no_token()),
        Err(source) => {
            return Err(match forbidden(&source) {
                Some(message) => ClusterError::Forbidden {
                    what: format!("reading the Secret {namespace}/{name}"),
                    message,
                },
                None => ClusterError::Token {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    source,
                },
            });
        }
    };
    secret
        .data
        .and_then(|data| data.get("token").cloned())
        .and_then(|token| String::from_utf8(token.0).ok())
        .map(|token| token.trim().to_owned())
        .filter(|token| !token.is_empty())
        .ok_or_else(no_token)
}

/// The API server's message when it answered 403.
fn forbidden(err: &kube::Error) -> Option<String> {
    match err {
        kube::Error::Api(status) if status.code == 403 => Some(status.message.clone()),
        _ => None,
    }
}

async fn get_json(client: &Client, url: &str, token: &str) -> Result<Value, String> {
    // The token goes in a header of its own: the API server drops `Authorization` (the
    // user's credentials) before it forwards a request to the pod.
    let request = ureq::http::Request::get(url)
        .header(crate::api::TOKEN_HEADER, token)
        .body(kube::client::Body::from(Vec::new()))
        .map_err(|e| e.to_string())?;
    let response = client.send(request).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    if status >= 400 {
        // The daemon's `{"error": ...}` (401: a wrong token), or the API server's Status
        // (403: RBAC; 503: "error trying to reach service: dial tcp ...").
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let message = value["error"]
            .as_str()
            .or(value["message"].as_str())
            .unwrap_or(text.trim());
        let hint = if status == 403 && value["kind"] == "Status" {
            format!("; {GRANT}")
        } else {
            String::new()
        };
        return Err(format!("HTTP {status}: {message}{hint}"));
    }
    serde_json::from_str(&text).map_err(|e| format!("not JSON ({e})"))
}
