"""A wrong gateway address fails fast with the reason (exit 3), saying that it is retrying
while it does; `--wait` waits for a gateway that comes up later."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.cli.conftest import cli
from tests.conftest import ROOT, free_port, python_env
from tests.processes import ADMIN_KEY, CLIENT_KEY, Proc


def test_a_closed_port_fails_in_seconds_with_exit_3_and_the_reason(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    ran = cli("submit", str(ROOT / "examples" / "tasks.json"), "--gateway", address, "--api-key", CLIENT_KEY,
              timeout=15)
    assert ran.code == 3, ran
    assert ran.seconds < 5.5, f"took {ran.seconds:.1f}s"
    assert ran.err_lines[0].startswith(f"cannot reach gateway at {address} yet (")
    assert "retrying for" in ran.err_lines[0] and "--wait" in ran.err_lines[0]
    assert ran.err_lines[-1] == f"imagemesh: cannot reach gateway at {address}: Failed to connect to remote host: Connection refused"
    assert len(ran.err_lines) == 2 and ran.out == ""

    status = cli("status", "b1", "--gateway", address, "--api-key", CLIENT_KEY, timeout=15)
    assert status.code == 3 and status.seconds < 5.5


def test_wait_waits_its_seconds_then_gives_up(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    ran = cli("--wait", "5", "workers", "--gateway", address, "--api-key", ADMIN_KEY, timeout=20)
    assert ran.code == 3
    assert 5 <= ran.seconds < 9, ran.seconds
    assert "retrying for 5 s" in ran.err_lines[0] and "--wait" not in ran.err_lines[0]


def test_wait_connects_to_a_gateway_that_starts_later(mesh_factory, tmp_path):
    m = mesh_factory()
    port = free_port()
    env = python_env(IMAGEMESH_GATEWAY=f"127.0.0.1:{port}", IMAGEMESH_API_KEY=ADMIN_KEY)
    waiting = subprocess.Popen([sys.executable, "-m", "imagemesh.cli", "workers", "--json", "--wait", "60"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        assert waiting.poll() is None, waiting.communicate()
        gateway = Proc("gateway-late", ["gateway"], m.env(IMAGEMESH_LISTEN=f"127.0.0.1:{port}"), tmp_path)
        m.procs.append(gateway)
        gateway.announced("GATEWAY")
        out, err = waiting.communicate(timeout=30)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.communicate()
    assert waiting.returncode == 0, err
    assert err.startswith(f"cannot reach gateway at 127.0.0.1:{port} yet")
    assert out == ""  # no workers yet: no lines
