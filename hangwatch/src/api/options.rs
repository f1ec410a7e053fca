//! Where the per-process API is served and what the outputs leave out: the flags of
//! `hangwatch run` and their twins in the config file's `[api]` table (docs/security.md).
use std::{net::SocketAddr, path::PathBuf};

use clap::Args;

use crate::{
    config::{ExposeFile, Listen, SocketPath, parse_listen, parse_socket},
    sink::redact::Redaction,
};

/// Where the per-process API listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/hangwatch/api.sock";

#[derive(Debug, Default, Clone, Args)]
pub struct ExposeArgs {
    /// Unix socket of the per-process API (hangs, history, watch, threads, status), or
    /// "off": mode 0600, owned by root; each caller sees only the processes it could
    /// ptrace itself [default: /run/hangwatch/api.sock]
    #[arg(long, value_name = "PATH", value_parser = parse_socket)]
    pub api_socket: Option<SocketPath>,

    /// Let this group's members connect to --api-socket too (mode 0660)
    #[arg(long, value_name = "GROUP")]
    pub api_socket_group: Option<String>,

    /// Serve the per-process API on this TCP address too, for `hangwatch list
    /// --all-nodes` through the Kubernetes API server's pod proxy; every request must carry
    /// the token of --cluster-api-token-file [default: off]
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    pub cluster_api_listen: Option<Listen>,

    /// The file holding the cluster API's token (a mounted Secret; re-read at each request,
    /// so a rotation needs no restart)
    #[arg(long, value_name = "FILE")]
    pub cluster_api_token_file: Option<PathBuf>,

    /// Leave raw kernel addresses out of events on stdout and the webhook (frames keep
    /// their symbol and offset)
    #[arg(long)]
    pub redact_kernel_addresses: bool,

    /// Replace every command-line argument of a hung process by "<redacted>" (argv[0]
    /// stays) in events, the API and the metrics
    #[arg(long)]
    pub redact_cmdline: bool,
}

/// The resolved settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposure {
    pub socket: Option<PathBuf>,
    pub socket_group: Option<String>,
    pub cluster: Option<ClusterListener>,
    pub redaction: Redaction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterListener {
    pub addr: SocketAddr,
    /// Required: the start fails without it (`listeners::ServeError::NoClusterToken`).
    pub token_file: Option<PathBuf>,
}

impl ExposeArgs {
    /// These flags over `file`'s keys over the defaults.
    pub fn merge(self, file: ExposeFile) -> Exposure {
        let Self {
            api_socket,
            api_socket_group,
            cluster_api_listen,
            cluster_api_token_file,
            redact_kernel_addresses,
            redact_cmdline,
        } = self;
        let socket = api_socket
            .or(file.socket)
            .unwrap_or_else(|| SocketPath(Some(PathBuf::from(DEFAULT_SOCKET))))
            .0;
        let cluster = cluster_api_listen
            .or(file.cluster_listen)
            .and_then(|l| l.0)
            .map(|addr| ClusterListener {
                addr,
                token_file: cluster_api_token_file.or(file.cluster_token_file),
            });
        Exposure {
            socket,
            socket_group: api_socket_group.or(file.socket_group),
            cluster,
            redaction: Redaction {
                kernel_addresses: redact_kernel_addresses
                    || file.redact_kernel_addresses.unwrap_or(false),
                cmdline: redact_cmdline || file.redact_cmdline.unwrap_or(false),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn defaults_and_twins() {
        let exposure = ExposeArgs::default().merge(ExposeFile::default());
        assert_eq!(exposure.socket.as_deref(), Some(Path::new(DEFAULT_SOCKET)));
        assert_eq!(exposure.cluster, None);
        assert_eq!(exposure.redaction, Redaction::default());

        let file: ExposeFile = toml::from_str(
            "socket = \"off\"\ncluster_listen = \"0.0.0.0:9925\"\ncluster_token_file = \"/t\"\nredact_cmdline = true\n",
        )
        .expect("parses");
        let exposure = ExposeArgs::default().merge(file);
        assert_eq!(exposure.socket, None);
        assert_eq!(
            exposure.cluster.map(|c| c.addr.to_string()).as_deref(),
            Some("0.0.0.0:9925")
        );
        assert!(exposure.redaction.cmdline);

        let flags = ExposeArgs {
            cluster_api_listen: Some(parse_listen("127.0.0.1:9925").expect("addr")),
            ..ExposeArgs::default()
        };
        let cluster = flags.merge(ExposeFile::default()).cluster.expect("on");
        assert_eq!(cluster.token_file, None, "refused at start, not here");
        assert!(parse_socket("api.sock").is_err());
        assert!(toml::from_str::<ExposeFile>("socket = \"relative\"").is_err());
    }
}
