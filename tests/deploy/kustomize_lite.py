"""A minimal, offline kustomize resolver for deploy/k8s (no binary needed).

Implements the subset that deploy/k8s uses, in kustomize's order (resources, components,
generators, patches, replacements, namespace; local-config dropped at the end) and fails loudly on
any kustomization key or option it does not implement, so it cannot silently disagree with kustomize:
``resources`` (files and folders), ``components``, ``configMapGenerator`` / ``secretGenerator``
(``files``, ``literals``; name hashes must be disabled), ``patches`` (JSON 6902 lists and strategic
merge as a plain merge), ``replacements`` (``*``, ``[key=value]`` and ``[dotted.key]`` in field
paths; a numeric target stays numeric) and ``namespace``. When ``kubectl`` is present the tests
compare this resolver's output with ``kubectl kustomize``.
"""

from __future__ import annotations

import base64
import copy
import re
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_KEYS = {
    "apiVersion", "kind", "resources", "components", "namespace", "configMapGenerator",
    "secretGenerator", "generatorOptions", "patches", "replacements",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "StorageClass", "PersistentVolume", "PriorityClass"}
LOCAL_CONFIG = "config.kubernetes.io/local-config"


class KustomizeError(Exception):
    pass


def kustomization_file(folder: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        if (folder / name).is_file():
            return folder / name
    raise KustomizeError(f"{folder}: no kustomization file")


def load_docs(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise KustomizeError(f"missing file {path}")
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def referenced_files(folder: Path) -> list[Path]:
    """Every file or folder a kustomization (and what it includes) names, resolved."""
    folder = folder.resolve()
    k = yaml.safe_load(kustomization_file(folder).read_text()) or {}
    out: list[Path] = []
    for entry in k.get("resources", []) + k.get("components", []):
        p = (folder / entry).resolve()
        out.append(p)
        if p.is_dir():
            out += referenced_files(p)
    for gen in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
        out += [(folder / f.split("=", 1)[-1]).resolve() for f in gen.get("files", [])]
    out += [(folder / p["path"]).resolve() for p in k.get("patches", []) if "path" in p]
    return out


def build(folder: Path) -> list[dict[str, Any]]:
    """``kustomize build folder``: the rendered objects, local-config ones dropped."""
    docs = _build(Path(folder).resolve(), [], component=False)
    return [d for d in docs if (d.get("metadata", {}).get("annotations") or {}).get(LOCAL_CONFIG) != "true"]


def _build(folder: Path, accumulated: list[dict[str, Any]], component: bool) -> list[dict[str, Any]]:
    k = yaml.safe_load(kustomization_file(folder).read_text()) or {}
    unknown = set(k) - SUPPORTED_KEYS
    if unknown:
        raise KustomizeError(f"{folder}: kustomize_lite does not implement {sorted(unknown)}")
    kind = k.get("kind", "Kustomization")
    if component != (kind == "Component"):
        raise KustomizeError(f"{folder}: kind {kind} used as {'component' if component else 'resource'}")
    docs = accumulated
    for entry in k.get("resources", []):
        path = (folder / entry).resolve()
        if path.is_dir():
            docs += _build(path, [], component=False)
        else:
            docs += copy.deepcopy(load_docs(path))
    for entry in k.get("components", []):
        docs = _build((folder / entry).resolve(), docs, component=True)
    options = k.get("generatorOptions", {})
    if set(options) - {"disableNameSuffixHash"} or (
        (k.get("configMapGenerator") or k.get("secretGenerator")) and not options.get("disableNameSuffixHash")
    ):
        raise KustomizeError(f"{folder}: only generatorOptions.disableNameSuffixHash: true is implemented")
    for gen in k.get("configMapGenerator", []):
        docs.append(_generate(folder, gen, "ConfigMap"))
    for gen in k.get("secretGenerator", []):
        docs.append(_generate(folder, gen, "Secret"))
    for patch in k.get("patches", []):
        _apply_patch(folder, patch, docs)
    for replacement in k.get("replacements", []):
        _apply_replacement(replacement, docs)
    if "namespace" in k:
        for d in docs:
            if d.get("kind") not in CLUSTER_SCOPED:
                d.setdefault("metadata", {})["namespace"] = k["namespace"]
    return docs


def _generate(folder: Path, gen: dict[str, Any], kind: str) -> dict[str, Any]:
    if set(gen) - {"name", "namespace", "files", "literals"}:
        raise KustomizeError(f"{folder}: generator keys {sorted(gen)} not implemented")
    data: dict[str, str] = {}
    for entry in gen.get("files", []):
        key, _, rel = entry.rpartition("=") if "=" in entry else ("", "", entry)
        path = folder / rel
        if not path.is_file():
            raise KustomizeError(f"{folder}: generator file {rel} missing")
        data[key or path.name] = path.read_text()
    for literal in gen.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    meta: dict[str, Any] = {"name": gen["name"]}
    if "namespace" in gen:
        meta["namespace"] = gen["namespace"]
    if kind == "Secret":
        return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque",
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def _matches(doc: dict[str, Any], select: dict[str, Any]) -> bool:
    if set(select) - {"group", "version", "kind", "name", "namespace"}:
        raise KustomizeError(f"selector keys {sorted(select)} not implemented")
    group, _, version = doc.get("apiVersion", "").rpartition("/")
    checks = {"group": group, "version": version, "kind": doc.get("kind"),
              "name": doc.get("metadata", {}).get("name"), "namespace": doc.get("metadata", {}).get("namespace")}
    return all(checks[key] == value for key, value in select.items())


def _apply_patch(folder: Path, spec: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    if set(spec) - {"path", "patch", "target"}:
        raise KustomizeError(f"{folder}: patch keys {sorted(spec)} not implemented")
    body = yaml.safe_load((folder / spec["path"]).read_text()) if "path" in spec else yaml.safe_load(spec["patch"])
    if "path" in spec and not (folder / spec["path"]).is_file():
        raise KustomizeError(f"{folder}: patch file {spec['path']} missing")
    if isinstance(body, dict) and "target" not in spec:
        target = {"kind": body["kind"], "name": body["metadata"]["name"]}
    else:
        target = spec.get("target") or {}
    hits = [d for d in docs if _matches(d, target)]
    if not hits:
        raise KustomizeError(f"{folder}: patch target {target} matches nothing")
    for doc in hits:
        if isinstance(body, list):
            for op in body:
                _json6902(doc, op)
        else:
            _merge(doc, body)


def _merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for key, value in src.items():
        if value is None:
            dst.pop(key, None)
        elif isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value)
        else:
            dst[key] = copy.deepcopy(value)


def _json6902(doc: dict[str, Any], op: dict[str, Any]) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
    parent: Any = doc
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = parts[-1]
    kind = op["op"]
    if kind not in {"add", "replace", "remove"}:
        raise KustomizeError(f"JSON patch op {kind} not implemented")
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if kind == "add":
            parent.insert(index, copy.deepcopy(op["value"]))
        elif kind == "replace":
            parent[index] = copy.deepcopy(op["value"])
        else:
            del parent[index]
    else:
        if kind in {"replace", "remove"} and last not in parent:
            raise KustomizeError(f"JSON patch path {op['path']} does not exist")
        if kind == "remove":
            del parent[last]
        else:
            parent[last] = copy.deepcopy(op["value"])


_SEGMENT = re.compile(r"\[[^\]]*\]|[^.\[]+")


def split_field_path(path: str) -> list[str]:
    return [s for s in _SEGMENT.findall(path)]


def _resolve(node: Any, segments: list[str], path: str) -> list[tuple[Any, Any]]:
    """(container, key) pairs that ``segments`` reaches; raises if a non-wildcard step is missing."""
    seg, rest = segments[0], segments[1:]
    if seg == "*":
        keys = range(len(node)) if isinstance(node, list) else list(node) if isinstance(node, dict) else []
    elif seg.startswith("[") and "=" in seg:
        field, _, value = seg[1:-1].partition("=")
        if not isinstance(node, list):
            raise KustomizeError(f"{path}: {seg} applied to a non-list")
        keys = [i for i, item in enumerate(node) if isinstance(item, dict) and str(item.get(field)) == value]
    else:
        key = seg[1:-1] if seg.startswith("[") else seg
        keys = [key] if isinstance(node, dict) and key in node else []
    if not keys and seg != "*":
        raise KustomizeError(f"{path}: no field {seg}")
    if not rest:
        return [(node, key) for key in keys]
    out: list[tuple[Any, Any]] = []
    for key in keys:
        out += _resolve(node[key], rest, path)
    return out


def _apply_replacement(spec: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    if set(spec) - {"source", "targets"}:
        raise KustomizeError(f"replacement keys {sorted(spec)} not implemented")
    source = spec["source"]
    select = {k: v for k, v in source.items() if k in {"group", "version", "kind", "name", "namespace"}}
    if set(source) - set(select) - {"fieldPath"}:
        raise KustomizeError(f"replacement source keys {sorted(source)} not implemented")
    found = [d for d in docs if _matches(d, select)]
    if len(found) != 1:
        raise KustomizeError(f"replacement source {select} matches {len(found)} objects")
    (container, key), = _resolve(found[0], split_field_path(source.get("fieldPath", "metadata.name")), str(source))
    value = container[key]
    for target in spec["targets"]:
        if set(target) - {"select", "fieldPaths"}:
            raise KustomizeError(f"replacement target keys {sorted(target)} not implemented")
        hits = [d for d in docs if _matches(d, target["select"])]
        if not hits:
            raise KustomizeError(f"replacement target {target['select']} matches nothing")
        for doc in hits:
            for field_path in target["fieldPaths"]:
                for node, k in _resolve(doc, split_field_path(field_path), field_path):
                    old = node[k]
                    new = value
                    if isinstance(old, bool):
                        new = str(value).lower() == "true"
                    elif isinstance(old, int) and isinstance(value, str) and value.lstrip("-").isdigit():
                        new = int(value)
                    elif isinstance(old, float) and isinstance(value, str):
                        new = float(value)
                    node[k] = new
