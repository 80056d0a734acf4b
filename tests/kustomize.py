"""Kustomize in Python, for the subset of it that docker/kubernetes uses, so that the manifests render on a
machine without kubectl. Where kubectl is installed, tests/test_kubernetes.py checks that `kubectl kustomize`
renders the same objects.

Supported: `resources` (files, and folders holding a kustomization.yaml), `namespace`, and `patches` written
as JSON Patch operations (RFC 6902: add, remove, replace, test; inline or from a file) aimed at a kind and a
name. Anything else is refused, so a kustomization that grows another feature fails here instead of rendering
differently from Kustomize.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "resources", "patches"}
PATCH_KEYS = {"target", "patch", "path"}
TARGET_KEYS = {"kind", "name"}
# Kinds without a namespace, among those a deployment like this one might hold.
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding",
                  "CustomResourceDefinition", "PriorityClass", "RuntimeClass"}


class KustomizeError(ValueError):
    pass


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize directory` prints, in the order the resources list them."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - KUSTOMIZATION_KEYS
    if unsupported:
        raise KustomizeError(f"{directory}: {sorted(unsupported)} not supported")
    objects: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            objects += render(path)
        else:
            objects += [document for document in yaml.safe_load_all(path.read_text()) if document]
    for patch in kustomization.get("patches", []):
        apply_patch(directory, patch, objects)
    if "namespace" in kustomization:
        for item in objects:
            if item["kind"] not in CLUSTER_SCOPED:
                item["metadata"]["namespace"] = kustomization["namespace"]
    return objects


def apply_patch(directory: Path, patch: dict[str, Any], objects: list[dict[str, Any]]) -> None:
    if set(patch) - PATCH_KEYS or set(patch["target"]) - TARGET_KEYS:
        raise KustomizeError(f"{directory}: patch {patch} not supported")
    operations = yaml.safe_load(patch["patch"] if "patch" in patch else (directory / patch["path"]).read_text())
    if not isinstance(operations, list):
        raise KustomizeError(f"{directory}: only JSON Patch operations are supported, not {operations!r}")
    targets = [item for item in objects if all((item["kind"] if key == "kind" else item["metadata"]["name"]) == value
                                               for key, value in patch["target"].items())]
    if not targets:
        raise KustomizeError(f"{directory}: no object matches {patch['target']}")
    for item in targets:
        for operation in operations:
            json_patch(item, operation)


def json_patch(document: dict[str, Any], operation: dict[str, Any]) -> None:
    """One RFC 6902 operation, in place."""
    *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in operation["path"].split("/")[1:]]
    container: Any = document
    for part in parents:
        container = container[int(part)] if isinstance(container, list) else container[part]
    op = operation["op"]
    if op == "test":
        actual = container[int(last)] if isinstance(container, list) else container.get(last)
        if actual != operation["value"]:
            raise KustomizeError(f"test failed at {operation['path']}: {actual!r} != {operation['value']!r}")
    elif op == "add" and isinstance(container, list):
        container.insert(len(container) if last == "-" else int(last), copy.deepcopy(operation["value"]))
    elif op in ("add", "replace"):
        key: Any = int(last) if isinstance(container, list) else last
        if op == "replace" and not isinstance(container, list) and key not in container:
            raise KustomizeError(f"replace: nothing at {operation['path']}")
        container[key] = copy.deepcopy(operation["value"])
    elif op == "remove":
        del container[int(last) if isinstance(container, list) else last]
    else:
        raise KustomizeError(f"JSON Patch operation {op!r} not supported")
