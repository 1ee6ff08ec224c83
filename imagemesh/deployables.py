"""The gateway's and the workers' entry points (`imagemesh-gateway`, `imagemesh-gen-worker`,
`imagemesh-enhance-worker`, `python -m imagemesh.deployables MODULE [ARGS]`).

In the repository the three deployables are the top-level packages `gateway`, `gen_worker` and
`enhance_worker` (`python -m gateway`). Installed as such into a shared site-packages, those
generic names would collide with another service's own `gateway`: one would shadow the other,
or pip would overwrite its files. So the wheel carries them in `imagemesh/_deployables/`, a
directory that is not on sys.path: importing `imagemesh` never makes a `gateway` importable.
These entry points put that directory first on sys.path of their own process only (a gateway
or a worker, which imports nobody else's `gateway`), then run the deployable as `python -m`
would. From a checkout or an editable install the deployables are the repository's folders.

What can go wrong: a client-only install lacks the server's dependencies; the entry point then
exits 2 with one line naming the extra to install instead of a traceback.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

DEPLOYABLES = ("gateway", "gen_worker", "enhance_worker")
# The extra that brings what each deployable imports beyond the client's dependencies.
EXTRAS = {"gateway": "server", "gen_worker": "server", "enhance_worker": "enhance"}
USAGE = f"usage: python -m imagemesh.deployables {{{','.join(DEPLOYABLES)}}}[.MODULE] [ARGS...]"


def home() -> Path:
    """The directory holding the deployables' packages: the wheel's, or the checkout's root."""
    package = Path(__file__).resolve().parent
    shipped = package / "_deployables"
    return shipped if shipped.is_dir() else package.parent


def run(module: str) -> None:
    """Run `module` (a deployable or one of its modules) as `python -m module` with sys.argv."""
    top = module.split(".")[0]
    if top not in DEPLOYABLES:
        raise SystemExit(USAGE)
    root = str(home())
    if sys.path[:1] != [root]:
        sys.path.insert(0, root)
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if not missing or missing in DEPLOYABLES or missing == "imagemesh":
            raise  # our own layout is broken: a bug, keep the traceback
        print(f"{module}: the module {missing!r} is not installed; install the {EXTRAS[top]!r} extra: "
              f"pip install 'imagemesh[{EXTRAS[top]}]'", file=sys.stderr)
        raise SystemExit(2) from None


def gateway() -> None:
    run("gateway")


def gen_worker() -> None:
    run("gen_worker")


def enhance_worker() -> None:
    run("enhance_worker")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        raise SystemExit(USAGE)
    sys.argv = [args[0], *args[1:]]
    run(args[0])


if __name__ == "__main__":
    main()
