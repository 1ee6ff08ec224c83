"""The README's promises: its Python code runs as written against a real mesh, and its tables of
commands and exit codes match the CLI."""

from __future__ import annotations

import re
import subprocess
import sys

from imagemesh import cli as imagemesh_cli
from tests.conftest import ROOT, python_env
from tests.processes import CLIENT_KEY

README = (ROOT / "README.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README, flags=re.S | re.M)


def test_the_readme_python_snippets_run_against_a_mesh(mesh, tmp_path):
    blocks = python_blocks()
    assert blocks, "the README has no Python example"
    for n, code in enumerate(blocks):
        script = tmp_path / f"readme_{n}.py"
        script.write_text(code)
        done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60, env=python_env(IMAGEMESH_GATEWAY=mesh.address,
                                                         IMAGEMESH_API_KEY=CLIENT_KEY))
        assert done.returncode == 0, f"README Python block {n} failed:\n{done.stderr}"
        assert done.stdout.splitlines() == ["fox.png SUCCEEDED ['fox.png']"]


def test_the_readme_lists_every_command_and_exit_code():
    parser = imagemesh_cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name in commands:
        assert re.search(rf"`imagemesh {name}\b|/ `{name}\b", README), f"README does not list `{name}`"
    assert "`imagemesh keys new --role client" in README
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", README, flags=re.M)}
    shipped = {int(code) for code in imagemesh_cli.Exit}
    assert documented == shipped
    for code in shipped:
        assert re.search(rf"^  {code}\s", imagemesh_cli.EXIT_CODES, flags=re.M), f"--help lacks exit code {code}"
