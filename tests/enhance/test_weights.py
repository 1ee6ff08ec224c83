"""Weight files: loaded from the weights directory only, a missing one named, downloads verified."""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
from functools import partial

import pytest

from enhance_worker import weights
from enhance_worker.engine import EnhanceEngine
from tests.conftest import python_env
from tests.enhance.conftest import settings

pytestmark = pytest.mark.enhance

# Run in a child whose working directory is an empty temporary directory and whose every
# outbound connection fails: the models must load anyway, and leave nothing behind in the cwd.
LOAD_OFFLINE = r"""
import os, socket, sys
def refuse(*args, **kwargs):
    raise OSError("network disabled by the test")
socket.socket.connect = refuse
socket.create_connection = refuse
from enhance_worker.models import EnhanceModels
models = EnhanceModels.load(sys.argv[1])
print("LOADED", models.device_name, models.random_weights, sorted(os.listdir(".")))
"""


def test_models_load_from_the_weights_dir_only_without_network(random_weights, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = python_env(HOME=str(tmp_path / "home"), TORCH_HOME=str(tmp_path / "torch-home"))
    proc = subprocess.run([sys.executable, "-c", LOAD_OFFLINE, str(random_weights)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "LOADED cpu True []" in proc.stdout
    assert os.listdir(cwd) == []  # no gfpgan/weights, no facexlib/weights in the working directory
    assert not (tmp_path / "torch-home").exists()  # nothing fetched through torch.hub either


def test_a_missing_weight_file_is_named_with_the_command_that_fetches_it(random_weights, tmp_path):
    partial_dir = tmp_path / "partial"
    partial_dir.mkdir()
    for w in weights.WEIGHTS:
        if w is not weights.PARSER:
            (partial_dir / w.name).symlink_to(random_weights / w.name)
    with pytest.raises(weights.MissingWeights) as info:
        weights.check(partial_dir)
    message = str(info.value)
    assert "parsing_parsenet.pth" in message and "make weights" in message
    assert "GFPGANv1.4.pth" not in message


async def test_the_engine_refuses_to_start_without_weights_unless_a_fallback_is_allowed(tmp_path):
    with pytest.raises(weights.MissingWeights) as info:
        await EnhanceEngine.create(settings(tmp_path))
    assert "GFPGANv1.4.pth" in str(info.value) and "make weights" in str(info.value)
    engine = await EnhanceEngine.create(settings(tmp_path, fallback_if_no_weights=True))
    try:
        assert engine.fallback and engine.model_name == "lanczos-fallback"
    finally:
        await engine.close()


def test_random_weights_are_marked_as_random(random_weights):
    assert weights.is_random(random_weights)
    assert "RANDOM" in (random_weights / weights.RANDOM_MARKER).read_text()


@pytest.fixture
def file_server(tmp_path):
    """A real HTTP server on a free port serving tmp_path/served."""
    root = tmp_path / "served"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_keeps_a_verified_file_and_deletes_a_mismatched_one(file_server, tmp_path):
    root, base = file_server
    (root / "good.pth").write_bytes(b"good weights")
    (root / "evil.pth").write_bytes(b"swapped weights")
    good = weights.WeightFile("good.pth", f"{base}/good.pth", hashlib.sha256(b"good weights").hexdigest(), 12, "good")
    evil = weights.WeightFile("evil.pth", f"{base}/evil.pth", hashlib.sha256(b"the real one").hexdigest(), 12, "evil")
    target = tmp_path / "weights"
    assert weights.download(target, files=(good,), log=lambda *_: None) == [target / "good.pth"]
    assert (target / "good.pth").read_bytes() == b"good weights"
    with pytest.raises(weights.DownloadFailed) as info:
        weights.download(target, files=(good, evil), log=lambda *_: None)
    assert "does not match the published" in str(info.value)
    assert sorted(p.name for p in target.iterdir()) == ["good.pth"]  # no evil.pth, no evil.pth.part


def test_download_refuses_a_file_without_a_published_digest_unless_allowed(file_server, tmp_path):
    root, base = file_server
    (root / "new.pth").write_bytes(b"unpinned")
    unpinned = weights.WeightFile("new.pth", f"{base}/new.pth", "", 8, "unpinned")
    with pytest.raises(weights.DownloadFailed) as info:
        weights.download(tmp_path / "w", files=(unpinned,), log=lambda *_: None)
    assert "--allow-unverified" in str(info.value)
    weights.download(tmp_path / "w", files=(unpinned,), allow_unverified=True, log=lambda *_: None)
    assert (tmp_path / "w" / "new.pth").read_bytes() == b"unpinned"


def test_every_official_file_has_a_release_url_and_a_sha256():
    for w in weights.WEIGHTS:
        assert w.url.startswith("https://github.com/") and w.url.endswith("/" + w.name)
        assert len(w.sha256) == 64 and int(w.sha256, 16) >= 0
