"""The wheel as another service gets it: built from the sources, installed into fresh venvs with
only the client's dependencies (or the `demo` extra), used from outside the repository.

Every command here runs with its working directory outside the repository and without the
repository on PYTHONPATH, so nothing imports the checkout by accident.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest
from setuptools import find_packages

from tests.conftest import ROOT
from tests.processes import CLIENT_KEY, Mesh

from .conftest import SERVER_ONLY, SERVICE_MODULES, SERVICE_OWNER, make_venv, service_sources, service_wheel

pytestmark = pytest.mark.packaging

PNG = b"\x89PNG\r\n\x1a\n"


def wheel_names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_wheel_ships_the_typing_marker_the_stub_types_and_the_protos(wheel):
    names = set(wheel_names(wheel))
    assert "imagemesh/py.typed" in names
    assert {"imagemesh/v1/imagemesh_pb2.pyi", "imagemesh/v1/worker_pb2.pyi"} <= names
    with zipfile.ZipFile(wheel) as zf:
        for proto in sorted((ROOT / "protos" / "imagemesh" / "v1").glob("*.proto")):
            # Laid out by package path: `protoc -I site-packages/imagemesh/protos` resolves imports.
            shipped = f"imagemesh/protos/imagemesh/v1/{proto.name}"
            assert shipped in names, f"{proto.name} not in the wheel"
            assert zf.read(shipped) == proto.read_bytes()
        assert zf.read("imagemesh/examples/tasks.json") == (ROOT / "examples" / "tasks.json").read_bytes()


def test_wheel_has_no_top_level_package_but_imagemesh(wheel):
    """The deployables ride inside the package, so no generic top-level name can collide."""
    tops = {name.split("/")[0] for name in wheel_names(wheel) if ".dist-info/" not in name}
    assert tops == {"imagemesh"}
    shipped = {name.rsplit("/", 1)[0] for name in wheel_names(wheel) if name.endswith("/__init__.py")}
    for package in find_packages(str(ROOT), include=[f"{m}{t}" for m in SERVICE_MODULES for t in ("", ".*")]):
        assert f"imagemesh/_deployables/{package.replace('.', '/')}" in shipped, f"{package} missing from the wheel"


def test_client_install_brings_only_the_client_dependencies(client_venv):
    installed = client_venv.distributions()
    assert "imagemesh" in installed
    assert not installed & SERVER_ONLY, f"a client install pulls server packages: {sorted(installed & SERVER_ONLY)}"
    out = client_venv.run([client_venv.python, "-c",
                           "import importlib.metadata as m; print('\\n'.join(m.requires('imagemesh')))"],
                          cwd=client_venv.path)
    base = {re.split(r"[ <>=!~;\[]", r, maxsplit=1)[0].lower() for r in out.stdout.splitlines() if "extra ==" not in r}
    assert base == {"grpcio", "protobuf", "rich", "httpx"}


def test_client_imports_and_the_cli_runs_without_the_server_side(client_venv, tmp_path):
    code = ("import imagemesh, imagemesh.cli, imagemesh.v1.imagemesh_pb2_grpc, sys\n"
            "from imagemesh import Client, enhance, generate\n"
            "server = {'redis', 'prometheus_client', 'obstore', 'cryptography', 'numpy', 'PIL'}\n"
            "assert not server & set(sys.modules), server & set(sys.modules)\n")
    done = client_venv.run([client_venv.python, "-c", code], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    cli = client_venv.run([client_venv.bin("imagemesh"), "--help"], cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr
    assert "submit" in cli.stdout


def test_server_entry_points_without_the_server_extras_say_what_to_install(client_venv, tmp_path):
    for command, extra in (("imagemesh-gateway", "server"), ("imagemesh-gen-worker", "server"),
                           ("imagemesh-enhance-worker", "enhance")):
        done = client_venv.run([client_venv.bin(command), "--help"], cwd=tmp_path)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pip install 'imagemesh[{extra}]'" in lines[0], (command, done.stderr)
    demo = client_venv.run([client_venv.python, "-m", "imagemesh.demo"], cwd=tmp_path)
    assert demo.returncode != 0
    lines = demo.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'imagemesh[demo]'" in lines[0], demo.stderr


def test_installing_the_wheel_beside_a_service_with_its_own_gateway_leaves_it_intact(wheel, tmp_path):
    """A service that owns `gateway`, `gen_worker`, `enhance_worker` installs our client: its
    modules stay its own, ours works, and uninstalling ours removes none of its files."""
    venv = make_venv(tmp_path / "venv")
    venv.install(str(service_wheel(tmp_path)))
    venv.install(str(wheel))
    check = ("import gateway, gen_worker, enhance_worker, imagemesh.cli\n"
             f"assert {{m.OWNER for m in (gateway, gen_worker, enhance_worker)}} == {{{SERVICE_OWNER!r}}}\n")
    done = venv.run([venv.python, "-c", check], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    venv.pip("uninstall", "--yes", "imagemesh")
    done = venv.run([venv.python, "-c", check.replace(", imagemesh.cli", "")], cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_our_entry_points_run_our_deployables_beside_a_foreign_gateway(demo_venv, tmp_path):
    """With a service's `gateway` first on the path, `imagemesh-gateway` still runs ours."""
    foreign = service_sources(tmp_path / "svc")
    for command in ("imagemesh-gateway", "imagemesh-gen-worker", "imagemesh-enhance-worker"):
        done = demo_venv.run([demo_venv.bin(command), "--help"], cwd=foreign, PYTHONPATH=str(foreign))
        assert done.returncode == 0, (command, done.stderr)
        assert f"usage: {command}" in done.stdout
    done = demo_venv.run([demo_venv.python, "-c", "import gateway; print(gateway.OWNER)"], cwd=tmp_path,
                         PYTHONPATH=str(foreign))
    assert done.stdout.strip() == SERVICE_OWNER


def test_the_installed_cli_submits_a_batch_to_a_real_mesh(client_venv, redis_server, tmp_path):
    """The wheel's `imagemesh submit` against a gateway and a generation worker of the repository."""
    import redis as sync_redis

    sync_redis.Redis.from_url(redis_server.url).flushall()
    mesh = Mesh(redis_server.url, tmp_path, IMAGEMESH_CAPACITY="4")
    try:
        mesh.start_gateway()
        mesh.start_worker()
        tasks = tmp_path / "tasks.json"
        tasks.write_text(json.dumps({"tasks": [
            {"prompt": "a small red square", "output_filename": "red.png", "input": {"width": 32, "height": 32}},
            {"prompt": "a small blue square", "output_filename": "blue.png", "input": {"width": 32, "height": 32}},
        ]}))
        out, results = tmp_path / "out", tmp_path / "results.json"
        done = client_venv.run([client_venv.bin("imagemesh"), "--gateway", mesh.address, "--api-key", CLIENT_KEY,
                                "submit", str(tasks), "--out", str(results), "--download", str(out)],
                               cwd=tmp_path, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        saved = sorted(out.glob("*/*"))  # DIR/<task index>/<filename>: same names never collide
        assert [p.relative_to(out).as_posix() for p in saved] == ["0/red.png", "1/blue.png"]
        assert all(p.read_bytes().startswith(PNG) for p in saved)
        assert len(json.loads(results.read_text())["successful_results"]) == 2
    finally:
        mesh.close()


def test_the_wheels_demo_runs_a_whole_mesh_with_the_demo_extra(demo_venv, tmp_path):
    done = demo_venv.run([demo_venv.python, "-m", "imagemesh.demo"], cwd=tmp_path, timeout=180,
                         TMPDIR=str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "site-packages/imagemesh/examples/tasks.json" in done.stdout
    results = Path(re.search(r"results in (\S+)", done.stdout).group(1))
    report = json.loads(results.read_text())
    # examples/tasks.json: nine tasks, one with a provider this mesh does not have.
    assert len(report["successful_results"]) == 8 and len(report["failed_results"]) == 1
    enhanced = [r for r in report["successful_results"] if r["output_filename"] == "robot-hd.png"]
    assert enhanced, "the generate-then-enhance task did not succeed"
    for name in ("gateway", "gen-worker-0", "gen-worker-1", "enhance-worker"):
        assert f"{name}: exit 0" in done.stdout
