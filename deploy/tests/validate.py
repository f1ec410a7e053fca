"""Validates deploy/ against the Kubernetes and Prometheus Operator schemas, offline.

    validate.py DEPLOY_DIR [--rendered FILE]

- Renders the kustomization tree (the subset of kustomize that deploy/ uses: resources,
  images, configMapGenerator; any other field is refused, so that this rendering cannot
  silently drift from kustomize's) or, with --rendered, reads `kubectl kustomize` output.
  A generated ConfigMap with a hash suffix gets one from its content here too (not
  kustomize's exact encoding: what matters is that the name changes with the content),
  and the pod templates' references to it follow, as kustomize's do.
- Built-in kinds: kubernetes-validate's bundled JSON schemas, strict (unknown fields are
  errors), for every Kubernetes version from MIN_VERSION to the newest it ships.
- ServiceMonitor, PrometheusRule: the models generated from the Prometheus Operator's
  CRDs (cloudcoil-models-prometheus-operator); a field the model does not know is dropped
  by pydantic, so the object must survive a round trip unchanged.
- Every `hangwatch_*` metric that the alerts and the dashboard query is one the daemon
  exports (docs/metrics.md's table is the list; a unit test keeps it in step with the code).

Run by hangwatch/tests/deploy.rs with the venv `cargo xtask setup` makes.
"""

import argparse
import hashlib
import json
import pathlib
import re
import sys

import kubernetes_validate
import yaml
from cloudcoil.models.prometheus_operator import v1 as promop

# appArmorProfile in the securityContext is a field from 1.30 on.
MIN_VERSION = (1, 30)

CRD_MODELS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): promop.ServiceMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): promop.PrometheusRule,
}

KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "images", "configMapGenerator"}
GENERATOR_FIELDS = {"name", "namespace", "files", "options"}
GENERATOR_OPTIONS = {"labels", "disableNameSuffixHash"}


class Invalid(Exception):
    pass


def render(directory: pathlib.Path) -> list:
    """The objects `kubectl kustomize DIRECTORY` would print (for deploy/'s subset)."""
    path = directory / "kustomization.yaml"
    kustomization = yaml.safe_load(path.read_text())
    unknown = set(kustomization) - KUSTOMIZATION_FIELDS
    if unknown:
        raise Invalid(f"{path}: fields this check does not render: {sorted(unknown)}")
    objects = []
    for entry in kustomization.get("resources", []):
        target = directory / entry
        if target.is_dir():
            objects += render(target)
        elif target.is_file():
            objects += [(target, o) for o in yaml.safe_load_all(target.read_text()) if o]
        else:
            raise Invalid(f"{path}: resource {entry} does not exist")
    for generator in kustomization.get("configMapGenerator", []):
        unknown = set(generator) - GENERATOR_FIELDS
        unknown |= set(generator.get("options", {})) - GENERATOR_OPTIONS
        if unknown:
            raise Invalid(f"{path}: configMapGenerator fields not rendered: {sorted(unknown)}")
        options = generator.get("options", {})
        data = {}
        for spec in generator.get("files", []):
            key, _, file = spec.partition("=")
            file = file or key
            key = pathlib.Path(key).name
            data[key] = (directory / file).read_text()
        name = generator["name"]
        if not options.get("disableNameSuffixHash"):
            name = f"{name}-{content_suffix(data)}"
            renamed = [o for _, o in objects if rename_config_map(o, generator["name"], name)]
            if not renamed:
                raise Invalid(f"{path}: nothing here mounts the ConfigMap {generator['name']}")
        metadata = {"name": name, "labels": options.get("labels", {})}
        if "namespace" in generator:
            metadata["namespace"] = generator["namespace"]
        objects.append(
            (path, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data})
        )
    for image in kustomization.get("images", []):
        if set(image) - {"name", "newName", "newTag", "digest"}:
            raise Invalid(f"{path}: image {image} has fields not rendered here")
        uses = [o for _, o in objects if uses_image(o, image["name"])]
        if not uses:
            raise Invalid(f"{path}: images: no container uses {image['name']}")
        for obj in uses:
            set_image(obj, image)
    return objects


def content_suffix(data: dict) -> str:
    """Ten characters that change with the ConfigMap's data."""
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return digest[:10]


def rename_config_map(obj: dict, old: str, new: str) -> bool:
    """Points the pod template's configMap volumes named `old` at `new`; whether any was."""
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    renamed = False
    for volume in spec.get("volumes", []):
        if volume.get("configMap", {}).get("name") == old:
            volume["configMap"]["name"] = new
            renamed = True
    return renamed


def containers(obj: dict) -> list:
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


def uses_image(obj: dict, name: str) -> bool:
    return any(c.get("image", "").split(":")[0] == name for c in containers(obj))


def set_image(obj: dict, image: dict) -> None:
    for c in containers(obj):
        if c.get("image", "").split(":")[0] == image["name"]:
            c["image"] = image.get("newName", image["name"]) + ":" + image.get("newTag", "latest")


def versions() -> list:
    found = []
    for v in kubernetes_validate.utils.all_versions():
        major, minor = (int(x) for x in v.split(".")[:2])
        if (major, minor) >= MIN_VERSION:
            found.append(v)
    if not found:
        raise Invalid(f"kubernetes-validate ships no schema for {MIN_VERSION} or later")
    return found


def validate(source, obj: dict, kube_versions: list) -> str:
    key = (obj.get("apiVersion"), obj.get("kind"))
    name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')} ({source})"
    if key in CRD_MODELS:
        model = CRD_MODELS[key].model_validate(obj)
        back = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
        if back != obj:
            raise Invalid(f"{name}: fields the {key[1]} CRD does not have:\n{diff(obj, back)}")
        return f"{name}: valid ({key[1]} CRD model)"
    for version in kube_versions:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError as e:
            raise Invalid(f"{name}: no schema: {e.message}") from None
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path)
            raise Invalid(f"{name}: Kubernetes {version}: {path}: {e.message}") from None
    return f"{name}: valid (Kubernetes {kube_versions[0]} to {kube_versions[-1]}, strict)"


def diff(want, got, path="") -> str:
    if isinstance(want, dict) and isinstance(got, dict):
        lines = []
        for k in want:
            if k not in got:
                lines.append(f"  {path}/{k}")
            else:
                lines.append(diff(want[k], got[k], f"{path}/{k}"))
        return "\n".join(line for line in lines if line)
    if isinstance(want, list) and isinstance(got, list):
        lines = (diff(w, g, f"{path}/{i}") for i, (w, g) in enumerate(zip(want, got)))
        return "\n".join(line for line in lines if line)
    return "" if want == got else f"  {path}: {want!r} became {got!r}"


def queried_metrics(objects: list) -> set:
    """The hangwatch_* names in the alert expressions and the dashboard's queries."""
    names = set()
    pattern = re.compile(r"\bhangwatch_[a-z_]+")
    for _, obj in objects:
        texts = []
        if obj.get("kind") == "PrometheusRule":
            texts = [r["expr"] for g in obj["spec"]["groups"] for r in g["rules"]]
        elif obj.get("kind") == "ConfigMap" and "grafana_dashboard" in obj["metadata"].get(
            "labels", {}
        ):
            for value in obj.get("data", {}).values():
                dashboard = json.loads(value)
                texts = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
                texts += [v.get("definition", "") for v in dashboard["templating"]["list"]]
        for text in texts:
            names |= set(pattern.findall(text))
    return {re.sub(r"_(bucket|count|sum)$", "", n) for n in names}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("deploy", type=pathlib.Path)
    parser.add_argument("--rendered", type=pathlib.Path)
    args = parser.parse_args()
    try:
        if args.rendered:
            docs = yaml.safe_load_all(args.rendered.read_text())
            objects = [(args.rendered, o) for o in docs if o]
        else:
            objects = render(args.deploy)
        kube_versions = versions()
        for source, obj in objects:
            print(validate(source, obj, kube_versions))
        readme = (args.deploy.parent / "docs" / "metrics.md").read_text()
        documented = set(re.findall(r"^\| `(hangwatch_[a-z_]+)`", readme, re.M))
        unknown = queried_metrics(objects) - documented
        if unknown:
            raise Invalid(f"queries name metrics the daemon does not export: {sorted(unknown)}")
        kinds = sorted({o["kind"] for _, o in objects})
        print(f"{len(objects)} objects valid: {', '.join(kinds)}")
    except Invalid as e:
        print(f"invalid: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
