"""`imagemesh submit --download` and `imagemesh download`, run as real CLI processes against a real
mesh: every output fetched from wherever it is, nothing overwritten."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

from gen_worker.providers.local import render
from imagemesh.client import Client, generate
from imagemesh.v1 import imagemesh_pb2 as pb
from tests.conftest import ROOT, python_env
from tests.processes import CLIENT_KEY


def cli(m, *args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imagemesh.cli", "--gateway", m.address, "--api-key", CLIENT_KEY,
                           *args], cwd=cwd, env=python_env(PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                          timeout=120)


def started(mesh_factory, settings):
    m = mesh_factory(IMAGEMESH_CAPACITY="4", **settings)
    m.start_gateway()
    m.start_worker()
    return m


def same_name_tasks(tmp_path):
    tasks = [{"prompt": "a red fox", "output_filename": "same.png", "input": {"seed": 1, "width": 40, "height": 30}},
             {"prompt": "a blue fox", "output_filename": "same.png", "input": {"seed": 2, "width": 40, "height": 30}}]
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps(tasks))
    return path


async def test_submit_download_keeps_both_outputs_of_two_tasks_with_one_filename(mesh_factory, tmp_path):
    m = started(mesh_factory, {"IMAGEMESH_STORAGE_URL": str(tmp_path / "store")})
    tasks = same_name_tasks(tmp_path)
    done = cli(m, "submit", str(tasks), "--out", "results.json", "--download", "out", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    red, blue = render("a red fox", 1, 40, 30), render("a blue fox", 2, 40, 30)
    assert (tmp_path / "out/0/same.png").read_bytes() == red
    assert (tmp_path / "out/1/same.png").read_bytes() == blue
    report = json.loads((tmp_path / "results.json").read_text())
    rows = [f for r in report["successful_results"] for f in r["generated_files"]]
    assert len(rows) == 2 and all((tmp_path / row["path"]).is_file() and row["object"] for row in rows)

    again = cli(m, "submit", str(tasks), "--out", "results2.json", "--download", "out", "--no-progress", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "out/0/same.png").read_bytes() == red, "the first run's file is kept"
    assert (tmp_path / "out/0/same (2).png").read_bytes() == red
    assert sorted(p.name for p in (tmp_path / "out/1").iterdir()) == ["same (2).png", "same.png"]


async def test_download_a_finished_batch_as_a_zip_and_into_a_directory(mesh_factory, backend, tmp_path):
    name, settings, _store = backend
    m = started(mesh_factory, settings)
    async with Client(m.address, CLIENT_KEY) as c:
        tasks = [generate("a fox", "fox.png", num_outputs=2, seed=5, width=24, height=24),
                 generate("a fox", "fox.png", seed=9, width=24, height=24),
                 pb.Task(output_filename="bad.png", generate=pb.GenerateSpec(prompt="x", providers=["nope"]))]
        events = [e async for e in c.submit(tasks)]
    batch_id = events[0].batch_id
    expected = {"0/fox_1.png": render("a fox", 5, 24, 24), "0/fox_2.png": render("a fox", 6, 24, 24),
                "1/fox.png": render("a fox", 9, 24, 24)}

    done = cli(m, "download", batch_id, "--zip", "batch.zip", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "3 files of 2 tasks" in done.stderr and "1 tasks had failed" in done.stderr
    with zipfile.ZipFile(tmp_path / "batch.zip") as archive:
        assert {n: archive.read(n) for n in archive.namelist()} == expected
    refused = cli(m, "download", batch_id, "--zip", "batch.zip", cwd=tmp_path)
    assert refused.returncode == 2 and "exists" in refused.stderr  # refused before anything is sent
    assert not list(tmp_path.glob(".batch.zip*")), "no partial file left"

    done = cli(m, "download", batch_id, "--dir", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert {p.relative_to(tmp_path / "out").as_posix(): p.read_bytes()
            for p in (tmp_path / "out").rglob("*") if p.is_file()} == expected

    listed = cli(m, "submit", str(same_name_tasks(tmp_path)), "--out", "r.json", "--no-progress", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = [f for r in json.loads((tmp_path / "r.json").read_text())["successful_results"] for f in r["generated_files"]]
    assert all(row["object"] for row in rows)
    if name == "s3":
        assert all(row["url"].startswith("http") for row in rows), "S3 outputs carry a download URL"


async def test_another_tenants_batch_cannot_be_downloaded(mesh_factory, tmp_path):
    from tests.processes import OTHER_CLIENT_KEY

    m = started(mesh_factory, {"IMAGEMESH_STORAGE_URL": str(tmp_path / "store")})
    async with Client(m.address, OTHER_CLIENT_KEY) as other:
        events = [e async for e in other.submit([generate("theirs", "t.png", width=16, height=16)])]
    done = cli(m, "download", events[0].batch_id, "--dir", "stolen", cwd=tmp_path)
    assert done.returncode == 4 and "NOT_FOUND" in done.stderr  # refused by the gateway
    assert not (tmp_path / "stolen").exists()
