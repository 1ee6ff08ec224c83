"""The generated stubs in imagemesh/v1 match protos/: regenerate and compare."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_generated_stubs_are_not_stale(tmp_path: Path):
    protos = sorted((ROOT / "protos" / "imagemesh" / "v1").glob("*.proto"))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(ROOT / "protos"),
                    f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}",
                    *map(str, protos)], check=True)
    fresh = tmp_path / "imagemesh" / "v1"
    names = sorted(p.name for p in fresh.iterdir() if p.is_file())
    assert names, "protoc produced nothing"
    stale = [n for n in names if not filecmp.cmp(fresh / n, ROOT / "imagemesh" / "v1" / n, shallow=False)]
    assert not stale, f"stale generated stubs {stale}: run `make proto` and commit"


def test_public_api_names_are_the_contract():
    from imagemesh.v1 import imagemesh_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["ImageMesh"]
    assert set(service.methods_by_name) == {"SubmitBatch", "Stream", "WatchBatch", "GetBatch", "CancelBatch",
                                            "DownloadFile", "UploadInput"}
    admin = pb.DESCRIPTOR.services_by_name["MeshAdmin"]
    assert set(admin.methods_by_name) == {"ListKeys", "SetKeyLimit", "ListWorkers", "ListProviders"}
    fields = {f.name for f in pb.TaskResult.DESCRIPTOR.fields}
    assert {"task_index", "task_id", "output_filename", "state", "files", "error", "provider", "attempts",
            "timings", "labels", "deduplicated"} <= fields
