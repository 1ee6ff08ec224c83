"""Machine output is exact: piped, every `--json` line is one JSON document, one per event or
item, whatever the width of the data; human output is never wrapped at 80 columns."""

from __future__ import annotations

import json
import re

from tests.cli.conftest import cli
from tests.processes import ADMIN_KEY, CLIENT_KEY

TASKS = 11


def tasks_file(tmp_path) -> str:
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps([{"prompt": f"a lighthouse, variant {i}", "output_filename": f"light_{i}.png",
                                 "input": {"seed": i, "width": 64, "height": 64}} for i in range(TASKS)]))
    return str(path)


def parsed(lines: list[str]) -> list[dict]:
    return [json.loads(line) for line in lines]  # fails the test on the first line that is not JSON


def test_watch_json_piped_writes_one_exact_json_line_per_event(mesh, tmp_path):
    env = {"IMAGEMESH_GATEWAY": mesh.address, "IMAGEMESH_API_KEY": CLIENT_KEY}
    submitted = cli("submit", tasks_file(tmp_path), "--out", str(tmp_path / "r.json"), **env)
    assert submitted.code == 0, submitted.err
    batch_id = json.loads((tmp_path / "r.json").read_text())["batch_id"]

    watched = cli("watch", batch_id, "--json", **env)
    assert watched.code == 0, watched.err
    events = parsed(watched.out_lines)
    assert len(watched.out_lines) == TASKS + 2
    assert [next(k for k in ("accepted", "result", "summary") if k in e) for e in events] == \
        ["accepted"] + ["result"] * TASKS + ["summary"]
    results = [e["result"] for e in events if "result" in e]
    assert sorted(r["task_index"] for r in results) == list(range(TASKS))
    assert {r["state"] for r in results} == {"SUCCEEDED"}  # the state's name, snake_case fields
    stored = results[0]["files"][0]
    assert stored["object"].endswith(".png") and int(stored["size_bytes"]) > 0
    assert max(len(line) for line in watched.out_lines) > 200  # long lines, whole (not wrapped at 80)
    assert events[-1]["summary"]["succeeded"] == TASKS

    after = cli("watch", batch_id, "--after", events[5]["cursor"], "--json", **env)
    assert len(parsed(after.out_lines)) == TASKS + 2 - 6


def test_submit_json_streams_every_event_as_a_json_line(mesh, tmp_path):
    env = {"IMAGEMESH_GATEWAY": mesh.address, "IMAGEMESH_API_KEY": CLIENT_KEY}
    submitted = cli("submit", tasks_file(tmp_path), "--json", **env)
    assert submitted.code == 0, submitted.err
    events = parsed(submitted.out_lines)
    assert len(events) == TASKS + 2  # accepted, a result per task, summary
    assert "accepted" in events[0] and events[-1]["summary"]["succeeded"] == TASKS
    assert submitted.err == ""  # no progress bar or result lines mixed in


def test_status_is_one_line_when_piped_and_json_on_request(mesh, tmp_path):
    env = {"IMAGEMESH_GATEWAY": mesh.address, "IMAGEMESH_API_KEY": CLIENT_KEY}
    batch_id = "status-is-not-wrapped-" + "x" * 40
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps({"batch_id": batch_id, "tasks": [{"prompt": "p", "output_filename": "p.png"}]}))
    assert cli("submit", str(path), **env).code == 0

    status = cli("status", batch_id, **env)
    assert status.code == 0, status.err
    assert status.out_lines == [f"batch {batch_id}: total 1, queued 0, running 0, succeeded 1, failed 0, "
                                "cancelled 0, done"]
    status = cli("status", batch_id, "--json", **env)
    (doc,) = parsed(status.out_lines)
    assert (doc["batch_id"], doc["succeeded"], doc["failed"], doc["done"]) == (batch_id, 1, 0, True)
    tasks = cli("status", batch_id, "--tasks", **env)
    assert tasks.out_lines[1:] == ["task\tstate\tattempts\toutput_filename", "0\tSUCCEEDED\t1\tp.png"]


def test_admin_lists_are_json_lines(mesh):
    env = {"IMAGEMESH_GATEWAY": mesh.address, "IMAGEMESH_API_KEY": ADMIN_KEY}
    workers = cli("workers", "--json", **env)
    assert workers.code == 0, workers.err
    assert [w["pool"] for w in parsed(workers.out_lines)] == ["generate"]
    providers = cli("--json", "providers", **env)  # options before the command work too
    assert {p["name"] for p in parsed(providers.out_lines)} >= {"local", "replicate"}


def test_on_a_terminal_the_key_column_is_never_truncated(monkeypatch):
    import io

    from imagemesh.terminal import Terminal

    class Screen(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("COLUMNS", "80")
    screen = Screen()
    ids = ["replicate:0123456789abcdef", "openai:fedcba9876543210"]
    leases = ", ".join(f"gw-host-12345-abcdef-{n} (zombie) 9.5s" for n in range(3))
    Terminal(screen, io.StringIO()).table(("key", "alias", "limit", "in use", "waiting", "leases"),
                                          [(i, "a-long-alias", 8, 3, 12, leases) for i in ids], whole=("key",))
    lines = re.sub(r"\x1b\[[0-9;]*m", "", screen.getvalue()).splitlines()  # styles aside
    assert max(len(line) for line in lines) <= 80
    for key_id in ids:
        assert any(f"│ {key_id} " in line for line in lines), screen.getvalue()
