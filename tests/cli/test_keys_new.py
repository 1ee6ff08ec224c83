"""`imagemesh keys new` prints a fresh key and the exact entry a gateway accepts for it."""

from __future__ import annotations

import json

from imagemesh.auth import ApiKeys, Caller
from tests.cli.conftest import cli
from tests.processes import api_keys_setting


def test_the_printed_entry_is_what_the_gateway_parses_for_the_printed_key():
    made = [json.loads(cli("keys", "new", "--role", role, "--name", "team-x", "--json").out)
            for role in ("client", "admin")]
    for doc in made:
        assert doc["entry"].startswith(f"team-x:{doc['role']}:")
        assert ApiKeys.parse(doc["entry"]).identify(f"Bearer {doc['key']}") == Caller("team-x", doc["role"])
    assert made[0]["key"] != made[1]["key"] and len(made[0]["key"]) >= 40
    unnamed = json.loads(cli("keys", "new", "--role", "client", "--json").out)
    assert unnamed["entry"].split(":")[0] == unnamed["name"] and len(unnamed["name"]) == 12


def test_bad_role_or_name_is_a_usage_error():
    assert cli("keys", "new", "--role", "root").code == 2
    bad = cli("keys", "new", "--role", "client", "--name", "a:b")
    assert bad.code == 2 and bad.err_lines == ["imagemesh: name: 'a:b': use 1-64 characters of A-Z a-z 0-9 _ . -"]


def test_a_new_key_authenticates_against_a_real_gateway(mesh_factory, tmp_path):
    made = cli("keys", "new", "--role", "client", "--name", "team-new")
    assert made.code == 0, made.err
    fields = dict(line.split(": ", 1) for line in made.out_lines)  # what a person copies
    assert set(fields) == {"key", "entry"}
    m = mesh_factory(IMAGEMESH_API_KEYS=api_keys_setting() + "," + fields["entry"])
    m.start_gateway()
    m.start_worker()
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps([{"prompt": "a key that works", "output_filename": "ok.png"}]))

    ran = cli("submit", str(tasks), "--gateway", m.address, "--api-key", fields["key"])
    assert ran.code == 0, ran.err
    refused = cli("submit", str(tasks), "--gateway", m.address, "--api-key", fields["key"] + "x")
    assert refused.code == 4
    assert refused.err_lines[-1].startswith("imagemesh: UNAUTHENTICATED: missing or unknown API key")
