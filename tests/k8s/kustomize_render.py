"""Render a kustomization the way `kustomize build` does, for the features k8s/ uses, in Python.

kustomize is a Go binary that no Python or Debian package ships, so the suite can't count on it.
This renderer covers exactly what our kustomizations use and refuses anything else
(`Unsupported`), so it can't silently produce something kustomize wouldn't:

- `resources`: YAML files (several documents each) and directories holding a kustomization;
- `configMapGenerator` / `secretGenerator` with `files` and `literals`, only with the name hash
  disabled (a hashed name would need kustomize's reference rewriting);
- `patches` with a `path` to strategic-merge patches: maps merge, `null` deletes a key, the
  Kubernetes merge keys below (and `ports`: a container's by `containerPort`, a Service's by
  `port`) merge lists by key, `$patch: delete` removes a list item or a
  whole resource;
- `namespace` (namespaced kinds and ServiceAccount subjects of role bindings) and `images`.

Where `kubectl kustomize` is installed, test_render.py checks this renderer's output against it,
object by object.
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PriorityClass",
    "StorageClass", "PersistentVolume", "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding", "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}
# Strategic-merge keys of the Kubernetes lists our patches touch.
MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
    "volumeMounts": "mountPath", "imagePullSecrets": "name",
}
KNOWN_FIELDS = {
    "apiVersion", "kind", "resources", "namespace", "images", "patches",
    "configMapGenerator", "secretGenerator", "generatorOptions",
}


class Unsupported(Exception):
    """The kustomization uses a kustomize feature this renderer does not implement."""


def load_documents(path: Path) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def identity(res: Resource) -> tuple[str, str, str]:
    """(group, kind, name): how a patch finds its target (kustomize ignores the version)."""
    group = res["apiVersion"].rpartition("/")[0]
    return group, res["kind"], res["metadata"]["name"]


def render(directory: Path) -> list[Resource]:
    """The resources `kustomize build directory` would print, in an unspecified order."""
    directory = Path(directory)
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kust) - KNOWN_FIELDS
    if unknown:
        raise Unsupported(f"{directory}: kustomization fields {sorted(unknown)}")
    resources: list[Resource] = []
    for entry in kust.get("resources", []):
        target = directory / entry
        resources += render(target) if target.is_dir() else load_documents(target)
    resources += _generated(directory, kust)
    for patch in kust.get("patches", []):
        if set(patch) != {"path"}:
            raise Unsupported(f"{directory}: patch {patch} (only `path:` patches)")
        for doc in load_documents(directory / patch["path"]):
            resources = _apply_patch(resources, doc, directory / patch["path"])
    if "namespace" in kust:
        for res in resources:
            _set_namespace(res, kust["namespace"])
    for image in kust.get("images", []):
        for res in resources:
            _set_image(res, image)
    return resources


def _generated(directory: Path, kust: dict) -> list[Resource]:
    options = kust.get("generatorOptions", {})
    out = []
    for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for gen in kust.get(key, []):
            opts = {**options, **gen.get("options", {})}
            if not opts.get("disableNameSuffixHash"):
                raise Unsupported(f"{directory}: {gen['name']} needs disableNameSuffixHash")
            if set(gen) - {"name", "files", "literals", "options"}:
                raise Unsupported(f"{directory}: generator fields {sorted(gen)}")
            data: dict[str, str] = {}
            for item in gen.get("files", []):
                name, _, path = item.rpartition("=")
                data[name or Path(path).name] = (directory / path).read_text()
            for item in gen.get("literals", []):
                name, _, value = item.partition("=")
                data[name] = value
            res: Resource = {"apiVersion": "v1", "kind": kind, "metadata": {"name": gen["name"]}}
            if opts.get("labels"):
                res["metadata"]["labels"] = dict(opts["labels"])
            if kind == "Secret":
                res["type"] = "Opaque"
                data = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
            res["data"] = data
            out.append(res)
    return out


def _apply_patch(resources: list[Resource], patch: Resource, source: Path) -> list[Resource]:
    matches = [r for r in resources if identity(r) == identity(patch)]
    if len(matches) != 1:
        raise ValueError(f"{source}: patch for {identity(patch)} matches {len(matches)} resources")
    if patch.get("$patch") == "delete":
        return [r for r in resources if r is not matches[0]]
    body = {k: v for k, v in patch.items() if k not in ("apiVersion", "kind")}
    body["metadata"] = {k: v for k, v in patch["metadata"].items() if k != "name"}
    merged = strategic_merge(matches[0], body)
    return [merged if r is matches[0] else r for r in resources]


def strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    """Merge `patch` into a copy of `base` with the strategic-merge rules listed above."""
    if isinstance(base, dict) and isinstance(patch, dict):
        if "$patch" in patch:
            raise Unsupported(f"$patch: {patch['$patch']} inside a map")
        out = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value, key)
            else:
                out[key] = copy.deepcopy(value)
        return out
    key = _merge_key(field, base)
    if isinstance(base, list) and isinstance(patch, list) and key is not None:
        # kustomize (kyaml) lists the patch's items first, in the patch's order, merged into
        # their base item if there is one; then the base items the patch does not mention.
        rest, first = copy.deepcopy(base), []
        for item in patch:
            index = next((i for i, old in enumerate(rest) if old.get(key) == item.get(key)), None)
            old = rest.pop(index) if index is not None else None
            if item.get("$patch") == "delete":
                continue
            first.append(copy.deepcopy(item) if old is None else strategic_merge(old, item))
        return first + rest
    return copy.deepcopy(patch)


def _merge_key(field: str, base: Any) -> str | None:
    """The strategic-merge key of a list, or None (the patch replaces the list). `ports` are a
    container's (`containerPort`) or a Service's (`port`)."""
    if field == "ports" and isinstance(base, list):
        return "containerPort" if any("containerPort" in p for p in base) else "port"
    return MERGE_KEYS.get(field)


def _set_namespace(res: Resource, namespace: str) -> None:
    if res["kind"] not in CLUSTER_SCOPED:
        res["metadata"]["namespace"] = namespace
    if res["kind"] in ("RoleBinding", "ClusterRoleBinding"):
        for subject in res.get("subjects", []):
            if subject.get("kind") == "ServiceAccount":
                subject["namespace"] = namespace


def pod_spec(res: Resource) -> dict | None:
    """The pod template's spec of a workload, or None for other kinds."""
    if res["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        return res["spec"]["template"]["spec"]
    return None


def _image_name(reference: str) -> str:
    """`repo/name:tag@digest` -> `repo/name` (a registry's `host:port/` is not a tag)."""
    name = reference.split("@")[0]
    head, _, last = name.rpartition("/")
    return f"{head}/{last.split(':')[0]}" if head else last.split(":")[0]


def _set_image(res: Resource, image: dict) -> None:
    spec = pod_spec(res)
    if spec is None:
        return
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        name = _image_name(container["image"])
        if name != image["name"]:
            continue
        new = image.get("newName", name)
        if "digest" in image:
            container["image"] = f"{new}@{image['digest']}"
        elif "newTag" in image:
            container["image"] = f"{new}:{image['newTag']}"
        else:
            container["image"] = new + container["image"][len(name):]
