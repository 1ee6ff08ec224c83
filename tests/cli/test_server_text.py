"""Text from the server (provider names, filenames, error messages) is printed as it is: never
parsed as rich markup, never swallowed, never a crash."""

from __future__ import annotations

import io
import json

from rich.console import Console

from imagemesh.terminal import Terminal, event_line, result_text, summary_text
from imagemesh.v1 import imagemesh_pb2 as pb
from tests.cli.conftest import cli
from tests.processes import ADMIN_KEY, CLIENT_KEY


def rendered(text) -> str:
    console = Console(file=io.StringIO(), width=200, force_terminal=True, color_system=None)
    console.print(text)
    return console.file.getvalue().rstrip("\n")


def test_results_render_server_text_literally():
    ok = pb.TaskResult(task_index=0, state=pb.SUCCEEDED, provider="[/bold]", model=":fox: [b]",
                       files=[pb.OutputFile(filename="[red]m.png")], timings=pb.Timings(total_ms=12))
    assert rendered(result_text(ok)) == "✓ #0 [red]m.png ([/bold], :fox: [b], 12 ms)"
    failed = pb.TaskResult(task_index=3, state=pb.FAILED,
                           error=pb.TaskError(code="INVALID_INPUT", message="bad [/] and \x1b[31mred\nline"))
    assert rendered(result_text(failed)) == "✗ #3 FAILED INVALID_INPUT: bad [/] and \\x1b[31mred\\x0aline"
    assert rendered(summary_text("[/b]", pb.BatchSummary(succeeded=1))) == \
        "batch [/b]: 1 succeeded, 0 failed, 0 cancelled in 0.00s"
    event = pb.BatchEvent(cursor="1-0", result=ok)
    assert event_line(event) == "1-0 result #0 SUCCEEDED [red]m.png"


def test_messages_and_tables_print_markup_as_text():
    out, err = io.StringIO(), io.StringIO()
    terminal = Terminal(out, err)
    terminal.say("[/bold] [red]x")
    terminal.fail("NOT_FOUND: batch '[/]' not found")
    terminal.table(("provider", "circuit"), [("[/bold]", "closed")])
    assert err.getvalue() == "[/bold] [red]x\nimagemesh: NOT_FOUND: batch '[/]' not found\n"
    assert out.getvalue() == "provider\tcircuit\n[/bold]\tclosed\n"


def test_bracketed_filenames_and_messages_through_the_real_cli(mesh, tmp_path):
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps([
        {"prompt": "a red m", "output_filename": "[red]m.png", "input": {"width": 32, "height": 32}},
        {"prompt": "a provider named like markup", "providers": ["[/bold]"], "output_filename": "b.png"}]))
    env = {"IMAGEMESH_GATEWAY": mesh.address, "IMAGEMESH_API_KEY": CLIENT_KEY}
    downloads = tmp_path / "out"
    ran = cli("submit", str(path), "--download", str(downloads), "--out", str(tmp_path / "r.json"), **env)
    assert "Traceback" not in ran.err, ran.err
    assert ran.code == 1, ran  # the task with the unknown provider failed, alone
    assert any(line.startswith("✓ #0 [red]m.png (local") for line in ran.err_lines), ran.err
    assert any(line.startswith("✗ #1 FAILED ") and "'[/bold]'" in line for line in ran.err_lines), ran.err
    assert (downloads / "0" / "[red]m.png").read_bytes().startswith(b"\x89PNG")  # DIR/<task index>/<name>

    batch_id = json.loads((tmp_path / "r.json").read_text())["batch_id"]
    watched = cli("watch", batch_id, **env)
    assert watched.code == 1
    assert any(line.endswith("result #0 SUCCEEDED [red]m.png") for line in watched.out_lines), watched.out
    assert any("'[/bold]'" in line for line in watched.out_lines), watched.out

    admin = {"IMAGEMESH_GATEWAY": mesh.address, "IMAGEMESH_API_KEY": ADMIN_KEY}
    providers = cli("providers", **admin)
    assert providers.code == 0 and "Traceback" not in providers.err
