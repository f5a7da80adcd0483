"""``kustomize build`` in Python, for the subset deploy/k8s/ uses, so that the manifests
are rendered and checked where no kustomize binary exists (Debian packages only the
kubectl of Kubernetes 1.20, whose kustomize v2.0 predates directories in ``resources``).
Where ``kubectl`` is on PATH, tests/cluster/test_k8s.py checks that both render the same.

The subset: ``resources`` (YAML files, and directories holding a kustomization.yaml),
``namespace`` (set on every namespaced object), ``labels`` with ``pairs`` only (added to
each object's ``metadata.labels``, as kustomize does without ``includeSelectors`` /
``includeTemplates``) and ``images`` (``name`` -> ``newName`` / ``newTag`` on the
containers and init containers of pod templates). Anything else raises
:class:`Unsupported`, so the subset cannot silently grow past what this implements.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

KNOWN_KEYS = {"apiVersion", "kind", "resources", "namespace", "labels", "images"}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
}


class Unsupported(Exception):
    """The kustomization uses something this renderer does not implement."""


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kustomize build directory`` would print (in file order)."""
    path = directory / "kustomization.yaml"
    kustomization = yaml.safe_load(path.read_text())
    unknown = set(kustomization) - KNOWN_KEYS
    if unknown:
        raise Unsupported(f"{path}: {sorted(unknown)}")
    objects: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            objects += render(target)
        else:
            objects += [copy.deepcopy(d) for d in yaml.safe_load_all(target.read_text()) if d]
    namespace = kustomization.get("namespace")
    for obj in objects:
        meta = obj.setdefault("metadata", {})
        if namespace and obj["kind"] not in CLUSTER_SCOPED:
            meta["namespace"] = namespace
        if obj["kind"] == "Namespace" and namespace and meta["name"] != namespace:
            raise Unsupported(f"Namespace {meta['name']} under namespace: {namespace}")
    for label in kustomization.get("labels", []):
        if set(label) - {"pairs"}:
            raise Unsupported(f"{path}: labels with {sorted(set(label) - {'pairs'})}")
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])
    for image in kustomization.get("images", []):
        if set(image) - {"name", "newName", "newTag"}:
            raise Unsupported(f"{path}: images with {sorted(set(image))}")
        for obj in objects:
            for container in _containers(obj):
                container["image"] = _retag(container["image"], image)
    return objects


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    pod = obj.get("spec", {}).get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def _retag(ref: str, rule: dict[str, str]) -> str:
    """``ref`` with ``rule`` applied when its name (the part before a tag) matches."""
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    name, tag = (ref[:colon], ref[colon + 1 :]) if colon > slash else (ref, None)
    if name != rule["name"]:
        return ref
    name = rule.get("newName", name)
    tag = rule.get("newTag", tag)
    return f"{name}:{tag}" if tag else name
