"""The protos pass `buf lint` (every service, rpc, message and enum documented; the API's fixed
names excepted in buf.yaml) and `buf breaking` against the release baseline
(protos/baseline.binpb): adding a field passes, removing, renumbering or renaming one fails.

buf comes from npm (`make buf`, or this module on first use) into .cache/; these tests skip only
when node/npm is not installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.packaging

BUF = ROOT / ".cache" / "buf" / "node_modules" / ".bin" / "buf"
BASELINE = ROOT / "protos" / "baseline.binpb"
PROTO = Path("protos") / "imagemesh" / "v1" / "imagemesh.proto"


@pytest.fixture(scope="module")
def buf() -> str:
    if not BUF.exists():
        if shutil.which("npm") is None or shutil.which("node") is None:
            pytest.skip("node/npm is not installed, so buf (from npm) cannot run: apt-get install nodejs npm")
        version = re.search(r"^BUF_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
        subprocess.run(["npm", "install", "--silent", "--no-save", "--prefix", str(ROOT / ".cache" / "buf"),
                        f"@bufbuild/buf@{version}"], check=True, capture_output=True, text=True, timeout=300)
    return str(BUF)


def checkout(tmp_path: Path) -> Path:
    """A copy of buf.yaml and protos/ to modify."""
    shutil.copy2(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    return tmp_path


def edit(root: Path, old: str, new: str) -> None:
    path = root / PROTO
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


def breaking(buf: str, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([buf, "breaking", "--against", str(BASELINE)], cwd=root, capture_output=True,
                          text=True, timeout=120)


def test_protos_pass_buf_lint(buf):
    done = subprocess.run([buf, "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_lint_requires_every_rpc_documented(buf, tmp_path):
    root = checkout(tmp_path)
    edit(root, "  // A batch's counts and each task's state. NOT_FOUND as WatchBatch.\n", "")
    done = subprocess.run([buf, "lint"], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "GetBatch" in done.stdout, done.stdout


def test_protos_are_compatible_with_the_release_baseline(buf):
    done = breaking(buf, ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_adding_a_field_passes_the_breaking_check(buf, tmp_path):
    root = checkout(tmp_path)
    edit(root, "  bool deduplicated = 11;\n", "  bool deduplicated = 11;\n  string added_for_the_test = 999;\n")
    done = breaking(buf, root)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("old, new, reported", [
    ("  bool deduplicated = 11;\n", "", "deduplicated"),                       # removed
    ("  bool deduplicated = 11;\n", "  bool deduplicated = 111;\n", "11"),     # renumbered
    ("  bool deduplicated = 11;\n", "  bool was_deduplicated = 11;\n", "deduplicated"),  # renamed
], ids=["removed", "renumbered", "renamed"])
def test_removing_renumbering_or_renaming_a_field_fails_the_breaking_check(buf, tmp_path, old, new, reported):
    root = checkout(tmp_path)
    edit(root, old, new)
    done = breaking(buf, root)
    assert done.returncode != 0, f"buf breaking accepted {new!r}"
    assert reported in done.stdout and "TaskResult" in done.stdout, done.stdout
