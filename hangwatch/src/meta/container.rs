//! Which container and pod a process runs in, from its `/proc/PID/cgroup` alone.
//!
//! Container runtimes name the cgroup of each container after its id, and kubelet names
//! each pod's cgroup after the pod's UID. The shapes differ by cgroup driver and runtime:
//!
//! | driver  | runtime    | path                                                                                     |
//! | ------- | ---------- | ---------------------------------------------------------------------------------------- |
//! | systemd | containerd | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope` |
//! | systemd | CRI-O      | `.../kubepods-besteffort-pod<uid_>.slice/crio-<id>.scope` (`crio-conmon-<id>.scope` is its monitor) |
//! | systemd | Docker     | `/system.slice/docker-<id>.scope`                                                        |
//! | cgroupfs| any        | `/kubepods/burstable/pod<uid>/<id>`, `/kubepods/pod<uid>/<id>` (guaranteed)             |
//! | cgroupfs| Docker     | `/docker/<id>`                                                                           |
//!
//! `<uid_>` is the pod UID with `-` written as `_` (systemd reserves `-` for nesting);
//! kind and other nested setups prefix these (`/kubelet.slice/kubelet-kubepods.slice/...`).
//! A container id is 64 hex digits for all three runtimes. Cgroup v2 has one line
//! (`0::/path`); v1 one line per hierarchy, which may differ (a hybrid host keeps v2 at `/`
//! and the container's path in the v1 hierarchies), so every line is tried, v2 first.
use serde::Serialize;

/// Where a process runs, as far as its cgroup tells.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ContainerRef {
    /// The runtime's container id (64 hex digits), as in a pod's
    /// `status.containerStatuses[].containerID` after its `containerd://`-like scheme.
    pub container_id: Option<String>,
    /// The pod's UID (`metadata.uid`), when kubelet made the cgroup.
    pub pod_uid: Option<String>,
}

impl ContainerRef {
    pub fn is_empty(&self) -> bool {
        self.container_id.is_none() && self.pod_uid.is_none()
    }
}

/// The container and pod of a process from the text of its `/proc/PID/cgroup`; `None`
/// when no line names either (a process outside containers).
pub fn from_proc_cgroup(text: &str) -> Option<ContainerRef> {
    let paths = text.lines().filter_map(|line| {
        let mut parts = line.splitn(3, ':');
        let id = parts.next()?;
        let _controllers = parts.next()?;
        Some((id == "0", parts.next()?))
    });
    // v2 first; then the v1 hierarchies in the kernel's order.
    let (v2, v1): (Vec<_>, Vec<_>) = paths.partition(|(is_v2, _)| *is_v2);
    v2.into_iter()
        .chain(v1)
        .find_map(|(_, path)| from_cgroup_path(path))
}

/// The container and pod named by one cgroup path.
pub fn from_cgroup_path(path: &str) -> Option<ContainerRef> {
    let mut found = ContainerRef::default();
    // containerd's `<pod slice>:cri-containerd:<id>` (its cgroupsPath, left as is by some
    // set-ups) is a pod and its container in one component.
    let components = path.split('/').filter(|c| !c.is_empty()).flat_map(|c| {
        match c.split_once(':') {
            Some((slice, rest)) => [Some(slice), Some(rest)],
            None => [Some(c), None],
        }
        .into_iter()
        .flatten()
    });
    for component in components {
        if let Some(uid) = pod_uid(component) {
            // The innermost pod wins (a pod's cgroup inside another's is a nested cluster).
            found.pod_uid = Some(uid);
            found.container_id = None;
        } else if let Some(id) = container_id(component) {
            // The first container below the pod: deeper cgroups are the container's own
            // (systemd or a nested runtime inside it). Outside pods, the innermost one.
            if found.container_id.is_none() || found.pod_uid.is_none() {
                found.container_id = Some(id);
            }
        }
    }
    (!found.is_empty()).then_some(found)
}

/// `kubepods-burstable-pod<uid_>.slice` (systemd) or `pod<uid>` (cgroupfs).
fn pod_uid(component: &str) -> Option<String> {
    let raw = match component.strip_suffix(".slice") {
        Some(slice) => slice.rsplit_once("-pod")?.1.replace('_', "-"),
        None => component.strip_prefix("pod")?.to_owned(),
    };
    is_pod_uid(&raw).then_some(raw)
}

/// A pod UID: a UUID (8-4-4-4-12 hex), or, for a static pod, the 32 hex digits of the hash
/// kubelet uses as its UID.
fn is_pod_uid(text: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if hex(text, 32) {
        return true;
    }
    let groups: Vec<&str> = text.split('-').collect();
    matches!(groups.as_slice(), [a, b, c, d, e]
        if hex(a, 8) && hex(b, 4) && hex(c, 4) && hex(d, 4) && hex(e, 12))
}

/// The runtimes' scope names, a bare id (cgroupfs), and the `slice:prefix:id` form some
/// containerd set-ups leave in the path; CRI-O's conmon scope is not the container.
fn container_id(component: &str) -> Option<String> {
    let id = if let Some(scope) = component.strip_suffix(".scope") {
        if scope.starts_with("crio-conmon-") {
            return None;
        }
        [
            "cri-containerd-",
            "crio-",
            "docker-",
            "containerd-",
            "libpod-",
        ]
        .iter()
        .find_map(|prefix| scope.strip_prefix(prefix))?
    } else if let Some((_, id)) = component.rsplit_once(':') {
        id
    } else {
        component
    };
    let valid = id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    valid.then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "7e5f4c3b2a1908f7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b3a2918abc";
    const ID2: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "1e0c3f4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b";
    const UID_: &str = "1e0c3f4a_5b6d_4e7f_8a9b_0c1d2e3f4a5b";

    fn both(path: &str) -> (Option<String>, Option<String>) {
        let r = from_cgroup_path(path).unwrap_or_default();
        (r.container_id, r.pod_uid)
    }

    fn expect(path: &str, id: Option<&str>, uid: Option<&str>) {
        assert_eq!(
            both(path),
            (id.map(str::to_owned), uid.map(str::to_owned)),
            "{path}"
        );
    }

    #[test]
    fn systemd_driver_containerd_every_qos_class() {
        for (qos_slice, pod_slice) in [
            (
                "kubepods-burstable.slice/",
                format!("kubepods-burstable-pod{UID_}.slice"),
            ),
            (
                "kubepods-besteffort.slice/",
                format!("kubepods-besteffort-pod{UID_}.slice"),
            ),
            ("", format!("kubepods-pod{UID_}.slice")),
        ] {
            expect(
                &format!("/kubepods.slice/{qos_slice}{pod_slice}/cri-containerd-{ID}.scope"),
                Some(ID),
                Some(UID),
            );
        }
    }

    #[test]
    fn systemd_driver_crio_and_its_conmon() {
        let pod = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"
        );
        expect(&format!("{pod}/crio-{ID}.scope"), Some(ID), Some(UID));
        // conmon runs in the pod's slice but is not the container.
        expect(&format!("{pod}/crio-conmon-{ID}.scope"), None, Some(UID));
        // The pod's own slice (the pause process under some runtimes).
        expect(&pod, None, Some(UID));
    }

    #[test]
    fn cgroupfs_driver() {
        expect(
            &format!("/kubepods/burstable/pod{UID}/{ID}"),
            Some(ID),
            Some(UID),
        );
        expect(
            &format!("/kubepods/besteffort/pod{UID}/{ID}"),
            Some(ID),
            Some(UID),
        );
        expect(&format!("/kubepods/pod{UID}/{ID}"), Some(ID), Some(UID));
    }

    #[test]
    fn docker_without_kubernetes() {
        expect(&format!("/system.slice/docker-{ID}.scope"), Some(ID), None);
        expect(&format!("/docker/{ID}"), Some(ID), None);
        // Docker in Docker: the innermost container.
        expect(&format!("/docker/{ID}/docker/{ID2}"), Some(ID2), None);
        // Podman.
        expect(
            &format!("/machine.slice/libpod-{ID}.scope/container"),
            Some(ID),
            None,
        );
    }

    #[test]
    fn nested_and_unusual_shapes() {
        // kind: kubelet's slices inside a node container.
        expect(
            &format!(
                "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
            ),
            Some(ID),
            Some(UID),
        );
        // A node container whose id comes first, then the pod and its container.
        expect(
            &format!("/system.slice/docker-{ID2}.scope/kubepods/burstable/pod{UID}/{ID}"),
            Some(ID),
            Some(UID),
        );
        // systemd inside the container: the container's cgroup, not its children.
        expect(
            &format!("/kubepods/pod{UID}/{ID}/init.scope"),
            Some(ID),
            Some(UID),
        );
        // containerd's cgroupsPath form, left as is under some set-ups.
        expect(
            &format!(
                "/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{ID}"
            ),
            Some(ID),
            Some(UID),
        );
        // A static pod: kubelet's UID is a 32-digit hash.
        expect(
            &format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0d1e2f3a4b5c6d7e8f90a1b2c3d4e5f6.slice/cri-containerd-{ID}.scope"
            ),
            Some(ID),
            Some("0d1e2f3a4b5c6d7e8f90a1b2c3d4e5f6"),
        );
    }

    #[test]
    fn not_containers() {
        for path in [
            "/",
            "/user.slice/user-1000.slice/session-3.scope",
            "/system.slice/containerd.service",
            "/system.slice/kubelet.service",
            "/kubepods.slice",
            "/kubepods.slice/kubepods-burstable.slice",
            // Not hex, wrong length, upper case.
            "/docker/not-a-container",
            "/docker/0123456789abcdef",
            &format!("/docker/{}", ID.to_uppercase()),
            // "pod" followed by something that is not a UID.
            "/kubepods/burstable/podcast",
            "/user.slice/app-podman.slice",
        ] {
            assert_eq!(from_cgroup_path(path), None, "{path}");
        }
    }

    #[test]
    fn proc_cgroup_v2_v1_and_hybrid() {
        // cgroup v2 only.
        let v2 = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope\n"
        );
        let r = from_proc_cgroup(&v2).expect("found");
        assert_eq!(r.container_id.as_deref(), Some(ID));
        assert_eq!(r.pod_uid.as_deref(), Some(UID));
        // cgroup v1, cgroupfs driver: every hierarchy names the container.
        let v1 = format!(
            "12:pids:/kubepods/burstable/pod{UID}/{ID}\n11:memory:/kubepods/burstable/pod{UID}/{ID}\n1:name=systemd:/kubepods/burstable/pod{UID}/{ID}\n"
        );
        assert_eq!(from_proc_cgroup(&v1), Some(r.clone()));
        // Hybrid: v2 at the root, the container only in the v1 hierarchies.
        let hybrid = format!("9:name=systemd:/kubepods/burstable/pod{UID}/{ID}\n8:pids:/\n0::/\n");
        assert_eq!(from_proc_cgroup(&hybrid), Some(r));
        // A host process.
        assert_eq!(
            from_proc_cgroup("9:name=systemd:/\n4:memory:/system.slice/x.service\n0::/\n"),
            None
        );
        // Garbage lines are skipped.
        assert_eq!(from_proc_cgroup("garbage\n\n0\n"), None);
    }
}
