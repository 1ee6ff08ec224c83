from __future__ import annotations

import hashlib

import pytest

from gateway.settings import GatewaySettings
from imagemesh.auth import ApiKeys
from imagemesh.config import load, parse_mapping
from imagemesh.credentials import Sealer, resolve_token


def test_flag_beats_environment_beats_default(monkeypatch):
    monkeypatch.setenv("IMAGEMESH_MAX_ATTEMPTS", "7")
    assert load(GatewaySettings, []).max_attempts == 7
    assert load(GatewaySettings, ["--max-attempts", "2"]).max_attempts == 2
    monkeypatch.delenv("IMAGEMESH_MAX_ATTEMPTS")
    assert load(GatewaySettings, []).max_attempts == 3


def test_help_lists_every_setting_with_its_variable(capsys):
    with pytest.raises(SystemExit):
        load(GatewaySettings, ["--help"])
    text = capsys.readouterr().out
    for name in ("IMAGEMESH_REDIS_URL", "IMAGEMESH_LISTEN", "IMAGEMESH_METRICS_PORT", "IMAGEMESH_API_KEYS",
                 "IMAGEMESH_KEY_LIMITS"):
        assert name in text


def test_bad_environment_value_names_the_variable(monkeypatch, capsys):
    monkeypatch.setenv("IMAGEMESH_LEASE_TTL", "soon")
    with pytest.raises(SystemExit):
        load(GatewaySettings, [])
    assert "IMAGEMESH_LEASE_TTL" in capsys.readouterr().err


def test_parse_mapping():
    assert parse_mapping("replicate=8, fal=4", value_type=int) == {"replicate": 8, "fal": 4}
    with pytest.raises(ValueError, match="name=value"):
        parse_mapping("replicate")


def test_api_keys_are_hashed_with_roles():
    digest = hashlib.sha256(b"secret-key").hexdigest()
    keys = ApiKeys.parse(f"ops:admin:{digest}")
    caller = keys.identify("Bearer secret-key")
    assert caller is not None and caller.role == "admin" and caller.tenant == "ops"
    assert keys.identify("Bearer wrong") is None
    assert keys.identify(None) is None
    with pytest.raises(ValueError, match="role"):
        ApiKeys.parse(f"root:{digest}")


def test_sealed_tokens_round_trip_and_fingerprints_hide_the_token():
    sealer = Sealer("rY1l0dtMZ8bE3H0cJv2yYl0c9c5b2H3iQ1m2p9w4Zx8=")
    sealed = sealer.seal("r8_sometoken")
    assert b"r8_sometoken" not in sealed and sealer.unseal(sealed) == "r8_sometoken"
    key = sealer.key_id("replicate", "r8_sometoken")
    assert key.startswith("replicate:") and "sometoken" not in key
    assert key == sealer.key_id("replicate", "r8_sometoken")
    with pytest.raises(ValueError) as info:
        Sealer("bm90LXRoZS1zYW1lLWtleS1ub3QtdGhlLXNhbWUta2U=").unseal(sealed)
    assert "r8_" not in str(info.value)


def test_credential_tiers():
    server = {"replicate": "server-token"}
    assert resolve_token("replicate", is_admin=True, request_tokens={}, server_tokens=server,
                         allow_server_tokens=False) == "server-token"
    assert resolve_token("replicate", is_admin=False, request_tokens={"replicate": "mine"}, server_tokens=server,
                         allow_server_tokens=False) == "mine"
    assert resolve_token("replicate", is_admin=False, request_tokens={}, server_tokens=server,
                         allow_server_tokens=False) is None
    assert resolve_token("replicate", is_admin=False, request_tokens={}, server_tokens=server,
                         allow_server_tokens=True) == "server-token"


def test_boolean_flags_work_bare_or_with_a_value():
    assert load(GatewaySettings, ["--allow-server-tokens"]).allow_server_tokens is True
    assert load(GatewaySettings, ["--allow-server-tokens", "false"]).allow_server_tokens is False
    assert load(GatewaySettings, []).allow_server_tokens is False
