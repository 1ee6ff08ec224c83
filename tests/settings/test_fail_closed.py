"""Every bad setting ends the real process with one line on stderr naming the setting (its flag
and its variable) and the value's problem, and exit status 2: no traceback, no silent default,
no start with a typo in it. And `--help` shows defaults, never a value from the environment."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT, free_port, python_env
from tests.processes import SECRET_KEY, api_keys_setting


def run(module: str, *args: str, timeout: float = 20, **env: str) -> subprocess.CompletedProcess:
    """`python -m module args` with only the given IMAGEMESH_* settings; a process that starts
    instead of refusing is stopped at `timeout` and fails the test."""
    try:
        return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout, env=python_env(**env))
    except subprocess.TimeoutExpired:
        pytest.fail(f"{module} {' '.join(args)} started instead of refusing its settings")


def refused(result: subprocess.CompletedProcess, *names: str) -> str:
    """The one stderr line of a refused start, checked to name every one of `names`."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(lines) == 1, result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture
def gateway_env(redis_server):
    """A gateway's settings that would start: each test spoils one."""
    return {"IMAGEMESH_REDIS_URL": redis_server.url, "IMAGEMESH_API_KEYS": api_keys_setting(),
            "IMAGEMESH_SECRET_KEY": SECRET_KEY, "IMAGEMESH_LISTEN": "127.0.0.1:0",
            "IMAGEMESH_METRICS_PORT": "-1", "IMAGEMESH_REDIS_PREFIX": "failclosed"}


WORKER_ENV = {"IMAGEMESH_GATEWAY": "127.0.0.1:1", "IMAGEMESH_METRICS_PORT": "-1",
              "IMAGEMESH_HEALTH_PORT": "0", "IMAGEMESH_API_KEY": "unused-worker-key"}


@pytest.mark.parametrize("args, env, names, problem", [
    (["--key-limits", "replicate=eight"], {}, ["--key-limits", "IMAGEMESH_KEY_LIMITS"], "'eight' is not a whole number"),
    ([], {"IMAGEMESH_LOG_LEVEL": "verbose"}, ["--log-level", "IMAGEMESH_LOG_LEVEL"], "'verbose' is not one of DEBUG"),
    (["--listen", "nonsense"], {}, ["--listen", "IMAGEMESH_LISTEN"], "'nonsense' is not host:port"),
    (["--key-limits", "replicat=8"], {}, ["IMAGEMESH_KEY_LIMITS"], "unknown provider 'replicat' (known: local, replicate, fal, openai)"),
    (["--key-daily-budgets", "replicat=100"], {}, ["IMAGEMESH_KEY_DAILY_BUDGETS"], "unknown provider 'replicat'"),
    (["--default-providers", "local,replicat"], {}, ["IMAGEMESH_DEFAULT_PROVIDERS"], "unknown provider 'replicat'"),
    (["--key-aliases", "replicat:0123456789abcdef=team"], {}, ["IMAGEMESH_KEY_ALIASES"], "unknown provider 'replicat'"),
    (["--providers", "local,replicat"], {}, ["IMAGEMESH_PROVIDERS"], "unknown provider 'replicat'"),
    # A provider the mesh does not offer, even a real one, is refused where it is named.
    (["--providers", "local", "--key-limits", "fal=2"], {}, ["IMAGEMESH_KEY_LIMITS"], "unknown provider 'fal' (known: local)"),
    (["--metrics-port", "99999"], {}, ["--metrics-port"], "99999 is not a port"),
    (["--lease-ttl", "soon"], {}, ["IMAGEMESH_LEASE_TTL"], "'soon' is not a number"),
    (["--max-attempts", "0"], {}, ["IMAGEMESH_MAX_ATTEMPTS"], "below the minimum of 1"),
    (["--allow-server-tokens", "maybe"], {}, ["IMAGEMESH_ALLOW_SERVER_TOKENS"], "'maybe' is not a boolean"),
    (["--log-format", "xml"], {}, ["IMAGEMESH_LOG_FORMAT"], "'xml' is not one of text, json"),
    (["--event-loop", "trio"], {}, ["IMAGEMESH_EVENT_LOOP"], "'trio' is not one of auto, uvloop, asyncio"),
    (["--api-keys", "root:abc"], {}, ["IMAGEMESH_API_KEYS"], "role must be one of"),
    (["--no-such-flag"], {}, ["--no-such-flag"], "unrecognized arguments"),
])
def test_gateway_refuses_a_bad_setting_in_one_line(gateway_env, args, env, names, problem):
    line = refused(run("gateway", *args, **{**gateway_env, **env}), *names)
    assert problem in line


def test_a_bad_secret_is_named_but_never_repeated(gateway_env):
    line = refused(run("gateway", **{**gateway_env, "IMAGEMESH_SECRET_KEY": "hunter2-is-not-a-fernet-key"}),
                   "--secret-key", "IMAGEMESH_SECRET_KEY")
    assert "not a Fernet key" in line and "hunter2" not in line


def test_gateway_refuses_a_listen_port_in_use(gateway_env):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        line = refused(run("gateway", **{**gateway_env, "IMAGEMESH_LISTEN": f"127.0.0.1:{port}"}),
                       "--listen", "IMAGEMESH_LISTEN")
    assert f"cannot listen on 127.0.0.1:{port}" in line and "in use" in line


@pytest.mark.parametrize("module", ["gateway", "gen_worker", "enhance_worker"])
def test_every_process_refuses_a_metrics_port_in_use(gateway_env, module, tmp_path):
    env = gateway_env if module == "gateway" else {**WORKER_ENV, "IMAGEMESH_FALLBACK": "1",
                                                   "IMAGEMESH_WEIGHTS_DIR": str(tmp_path)}
    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        port = held.getsockname()[1]
        line = refused(run(module, **{**env, "IMAGEMESH_METRICS_PORT": str(port)}),
                       "--metrics-port", "IMAGEMESH_METRICS_PORT")
    assert f":{port}" in line and "in use" in line


@pytest.mark.parametrize("module", ["gen_worker", "enhance_worker"])
def test_workers_refuse_a_health_port_in_use(module, tmp_path):
    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        port = held.getsockname()[1]
        line = refused(run(module, **{**WORKER_ENV, "IMAGEMESH_HEALTH_PORT": str(port), "IMAGEMESH_FALLBACK": "1",
                                      "IMAGEMESH_WEIGHTS_DIR": str(tmp_path)}),
                       "--health-port", "IMAGEMESH_HEALTH_PORT")
    assert str(port) in line and "in use" in line


def test_gateway_without_redis_says_where_without_the_password(gateway_env):
    port = free_port()  # nothing listens there
    line = refused(run("gateway", **{**gateway_env, "IMAGEMESH_REDIS_URL": f"redis://:hunter2@127.0.0.1:{port}/0",
                                     "IMAGEMESH_REDIS_WAIT": "0"}),
                   "--redis-url", "IMAGEMESH_REDIS_URL")
    assert f"cannot reach Redis at redis://127.0.0.1:{port}/0" in line
    assert "hunter2" not in line


def test_gateway_waits_for_redis_up_to_the_limit_then_gives_up(gateway_env):
    port = free_port()
    result = run("gateway", **{**gateway_env, "IMAGEMESH_REDIS_URL": f"redis://127.0.0.1:{port}/0",
                               "IMAGEMESH_REDIS_WAIT": "1"})
    assert result.returncode == 2
    *waiting, last = result.stderr.strip().splitlines()
    assert len(waiting) == 1 and "waiting up to 1s" in waiting[0]
    assert "cannot reach Redis" in last and "within 1s" in last and "IMAGEMESH_REDIS_URL" in last


@pytest.mark.parametrize("module, args, names, problem", [
    ("gen_worker", ["--default-models", "replicat=acme/x"], ["IMAGEMESH_DEFAULT_MODELS"], "unknown provider 'replicat'"),
    ("gen_worker", ["--gateway", "gateway-without-port"], ["IMAGEMESH_GATEWAY"], "is not host:port"),
    ("gen_worker", ["--capacity", "0"], ["IMAGEMESH_CAPACITY"], "below the minimum of 1"),
    ("gen_worker", ["--replicate-base-url", "api.replicate.com"], ["IMAGEMESH_REPLICATE_BASE_URL"], "not an http(s) URL"),
    ("enhance_worker", ["--half", "maybe"], ["IMAGEMESH_HALF"], "'maybe' is not auto, on or off"),
    ("enhance_worker", ["--health-port", "70000"], ["IMAGEMESH_HEALTH_PORT"], "70000 is not a port"),
    ("enhance_worker", ["--log-level", "verbose"], ["IMAGEMESH_LOG_LEVEL"], "'verbose' is not one of"),
])
def test_workers_refuse_a_bad_setting_in_one_line(module, args, names, problem):
    assert problem in refused(run(module, *args, **WORKER_ENV), *names)


def test_enhance_worker_without_weights_names_the_setting(tmp_path):
    line = refused(run("enhance_worker", **{**WORKER_ENV, "IMAGEMESH_WEIGHTS_DIR": str(tmp_path)}),
                   "--weights-dir", "IMAGEMESH_WEIGHTS_DIR")
    assert "missing" in line


SECRETS = {
    "IMAGEMESH_SECRET_KEY": SECRET_KEY,
    "IMAGEMESH_REPLICATE_TOKEN": "r8_helpleaktest0123456789abcdef",
    "IMAGEMESH_FAL_TOKEN": "fal-helpleak-0123456789",
    "IMAGEMESH_OPENAI_TOKEN": "sk-helpleak0123456789abcdef",
    "IMAGEMESH_API_KEYS": api_keys_setting(),
    "IMAGEMESH_API_KEY": "worker-key-helpleak-0123456789",
    "IMAGEMESH_REDIS_URL": "redis://:redis-password-helpleak@10.0.0.9:6379/0",
    "IMAGEMESH_LEASE_TTL": "77.5",
    "IMAGEMESH_CAPACITY": "4321",
}
# What must not appear: every secret (the key hashes too), and the plain values set above.
FORBIDDEN = [SECRET_KEY, "helpleak", "redis-password", "10.0.0.9", "77.5", "4321",
             *(entry.rsplit(":", 1)[1] for entry in api_keys_setting().split(","))]


@pytest.mark.parametrize("module", ["gateway", "gen_worker", "enhance_worker"])
def test_help_shows_defaults_and_never_a_value_from_the_environment(module):
    result = run(module, "--help", **SECRETS)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for piece in FORBIDDEN:
        assert piece not in text, f"--help printed an environment value ({piece[:12]}...)"
    # Defaults are shown in their place (the capacity's, not the environment's 4321).
    capacity = {"gateway": None, "gen_worker": 16, "enhance_worker": 2}[module]
    if module == "gateway":
        assert "IMAGEMESH_SECRET_KEY; secret: no value is ever shown" in text
        assert "IMAGEMESH_LEASE_TTL; default: 10.0" in text
    else:
        assert "IMAGEMESH_API_KEY; secret: no value is ever shown" in text
        assert f"IMAGEMESH_CAPACITY; default: {capacity}" in text
