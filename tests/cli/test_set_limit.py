"""`set-limit` refuses a key the mesh does not know (a typo, an id cut short by a table) instead
of creating a phantom key; `keys` shows ids whole."""

from __future__ import annotations

import json

from imagemesh.credentials import Sealer
from tests.cli.conftest import cli
from tests.processes import ADMIN_KEY, SECRET_KEY

SERVER_TOKEN = "r8_server_token_for_the_admin_tests_0123456789"
NAMED_TOKEN = "r8_a_token_not_used_yet_but_named_by_an_alias_01"


def key_ids(env) -> list[str]:
    listed = cli("keys", "--json", **env)
    assert listed.code == 0, listed.err
    return [json.loads(line)["id"] for line in listed.out_lines]


def test_set_limit_rejects_unknown_and_truncated_key_ids_in_one_line(mesh_factory):
    named_id = Sealer(SECRET_KEY).key_id("replicate", NAMED_TOKEN)
    m = mesh_factory(IMAGEMESH_REPLICATE_TOKEN=SERVER_TOKEN, IMAGEMESH_KEY_LIMITS="replicate=8",
                     IMAGEMESH_KEY_ALIASES=f"{named_id}=team-named")
    m.start_gateway()
    env = {"IMAGEMESH_GATEWAY": m.address, "IMAGEMESH_API_KEY": ADMIN_KEY}

    key_id = Sealer(SECRET_KEY).key_id("replicate", SERVER_TOKEN)
    by_alias = cli("set-limit", "replicate", "3", **env)  # the server token's alias
    assert by_alias.code == 0, by_alias.err
    assert by_alias.out_lines == [f"{key_id} (replicate): limit 3, in use 0"]

    for wrong in (key_id[:-4], "replicate:ffffffffffffffff", "replicat"):
        refused = cli("set-limit", wrong, "5", **env)
        assert refused.code == 4, (wrong, refused)
        assert len(refused.err_lines) == 1 and "Traceback" not in refused.err
        expected = "INVALID_ARGUMENT" if wrong == "replicat" else "NOT_FOUND"
        assert refused.err_lines[0].startswith(f"imagemesh: {expected}: key:"), refused.err
    assert key_ids(env) == [key_id], "a refused key id appeared in ListKeys"

    # Piped, the table is tab-separated and whole: the id can be copied from it.
    table = cli("keys", **env)
    assert table.code == 0, table.err
    assert table.out_lines[0].split("\t") == ["key", "alias", "limit", "in use", "waiting", "leases"]
    assert [line.split("\t")[:3] for line in table.out_lines[1:]] == [[key_id, "replicate", "3"]]

    # A key named by IMAGEMESH_KEY_ALIASES takes a limit before its first batch.
    named = cli("set-limit", named_id, "2", "--json", **env)
    assert named.code == 0, named.err
    assert (json.loads(named.out)["alias"], json.loads(named.out)["limit"]) == ("team-named", 2)
    assert cli("set-limit", "team-named", "4", **env).code == 0
    assert sorted(key_ids(env)) == sorted([key_id, named_id])
