"""`imagemesh`: submit batches and watch them, from a terminal or a script.

    imagemesh submit tasks.json [--out results.json] [--download DIR]
    imagemesh status BATCH [--tasks] | watch BATCH [--after CURSOR] | cancel BATCH
    imagemesh download BATCH (--dir DIR | --zip FILE.zip)
    imagemesh keys | set-limit KEY LIMIT | workers | providers          (admin key)
    imagemesh keys new --role client [--name NAME]                      (local: no gateway)

Every command takes `--json` (exact JSON lines on stdout, one per event or item, snake_case
field names) and the connection options `--gateway`, `--api-key`, `--wait [SECONDS]`, before or
after the command's name. What is written where: `imagemesh.terminal`. Tasks files:
`imagemesh.tasksfile`. Reaching the gateway: `imagemesh.reach`.

A command is an `async def cmd_x(client, args) -> int` registered in `build_parser()`; one that
must check its input before any connection (a tasks file) also sets `prepare(args)`, and one
that needs no gateway sets `local=True`. Exit codes are `Exit` (documented in `--help`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from enum import IntEnum
from pathlib import Path
from typing import Any

import grpc
import httpx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from imagemesh import downloads
from imagemesh.auth import ROLES
from imagemesh.client import Client, RequestTooLarge
from imagemesh.keygen import new_key
from imagemesh.reach import DEFAULT_BUDGET, WAIT_BUDGET, GatewayUnreachable, reach
from imagemesh.tasksfile import TasksFileError, load, load_tasks  # noqa: F401  (load_tasks: for callers)
from imagemesh.terminal import Terminal, event_line, message_dict, plain, result_text, summary_text
from imagemesh.v1 import imagemesh_pb2 as pb


class Exit(IntEnum):
    OK = 0
    TASKS_FAILED = 1     # the batch ran; some task failed or was cancelled
    USAGE = 2            # bad arguments or a bad tasks file: nothing was sent
    UNREACHABLE = 3      # the gateway could not be reached, or could not serve the call now
    REFUSED = 4          # the gateway answered: the request is wrong or not allowed
    INTERRUPTED = 130    # Ctrl-C
    BROKEN_PIPE = 141    # the reader of stdout went away (as a shell reports SIGPIPE)


EXIT_CODES = """\
exit codes:
  0    done (submit, watch: every task succeeded)
  1    the batch ran and some task failed or was cancelled (submit, watch)
  2    bad arguments or a bad tasks file; nothing was sent
  3    the gateway could not be reached or could not serve the call now (UNAVAILABLE,
       DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL, ...): retrying later may help
  4    the gateway refused the call (UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND,
       INVALID_ARGUMENT, FAILED_PRECONDITION, ...): retrying will not help
  130  interrupted (Ctrl-C)
  141  stdout was closed by its reader (`| head`)

--json on any command writes exact JSON lines to stdout (one per event or item). Without it,
stdout is plain lines when piped (tables only on a terminal); messages go to stderr."""

# Status codes after which the same call may succeed later; every other code refuses the call.
TRY_LATER = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED,
             grpc.StatusCode.CANCELLED, grpc.StatusCode.DATA_LOSS}

terminal = Terminal()


def describe(task: pb.Task) -> str:
    if task.HasField("generate"):
        return task.generate.prompt
    return "enhance"


def batch_outcome(summary: pb.BatchSummary | None) -> int:
    return Exit.OK if summary is not None and not summary.failed and not summary.cancelled else Exit.TASKS_FAILED


# -- batches -------------------------------------------------------------------------------------
def prepare_submit(args) -> None:
    args.tasks_file = load(args.file)


async def cmd_submit(client: Client, args) -> int:
    tasks, credentials, batch_id = args.tasks_file
    report: dict[str, Any] = {"batch_id": "", "successful_results": [], "failed_results": []}
    download = Path(args.download) if args.download else None
    summary = None
    progress = Progress(TextColumn("{task.description}", markup=False, style="bold"), BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), console=terminal.people,
                        disable=args.no_progress or args.json or not terminal.stderr_is_terminal)
    async with httpx.AsyncClient() as http:  # outputs given by URL (provider, S3)
        with progress:
            bar = progress.add_task("submitting", total=len(tasks))
            async for event in client.submit(tasks, credentials=credentials, batch_id=batch_id or None):
                if args.json:
                    terminal.json(event)
                if event.HasField("accepted"):
                    report["batch_id"] = event.batch_id
                    progress.update(bar, description=f"batch {plain(event.batch_id)}")
                elif event.HasField("result"):
                    r = event.result
                    row = {"task_index": r.task_index, "prompt": describe(tasks[r.task_index]),
                           "output_filename": r.output_filename}
                    if r.state == pb.SUCCEEDED:
                        row["generated_files"] = (await downloads.save_result(client, event.batch_id, r, download, http)
                                                  if download else [downloads.entry(f) for f in r.files])
                        row["provider"] = r.provider
                        report["successful_results"].append(row)
                    else:
                        row["error"] = {"code": r.error.code, "message": r.error.message}
                        report["failed_results"].append(row)
                    if not args.json:
                        progress.console.print(result_text(r))
                    progress.advance(bar)
                elif event.HasField("summary"):
                    summary = event.summary
                    report["summary"] = message_dict(summary)
                    if not args.json:
                        progress.console.print(summary_text(event.batch_id, summary))
    for key in ("successful_results", "failed_results"):
        report[key].sort(key=lambda row: row["task_index"])
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
        terminal.say(f"results written to {args.out}")
    return batch_outcome(summary)


async def cmd_status(client: Client, args) -> int:
    s = await client.status(args.batch)
    if args.json:
        terminal.json(s)
        return Exit.OK
    terminal.line(f"batch {s.batch_id}: total {s.total}, queued {s.queued}, running {s.running}, "
                  f"succeeded {s.succeeded}, failed {s.failed}, cancelled {s.cancelled}{', done' if s.done else ''}")
    if args.tasks:
        terminal.table(("task", "state", "attempts", "output_filename"),
                       [(t.task_index, pb.TaskState.Name(t.state), t.attempts, t.output_filename) for t in s.tasks])
    return Exit.OK


async def cmd_watch(client: Client, args) -> int:
    summary = None
    async for event in client.watch(args.batch, args.after):
        if args.json:
            terminal.json(event)
        else:
            terminal.line(event_line(event))
        if event.HasField("summary"):
            summary = event.summary
    return batch_outcome(summary)


class UsageError(Exception):
    """Input refused before anything is sent (exit 2)."""


def prepare_download(args) -> None:
    if args.zip and Path(args.zip).exists():
        raise UsageError(f"{args.zip} exists; choose another name (nothing is overwritten)")


async def cmd_download(client: Client, args) -> int:
    try:
        counts = await downloads.download_batch(client, args.batch, directory=Path(args.dir) if args.dir else None,
                                                zip_path=Path(args.zip) if args.zip else None)
    except downloads.DownloadFailed as exc:
        terminal.fail(f"download failed: {exc}")
        return Exit.REFUSED
    where = args.zip or args.dir
    if args.json:
        terminal.json({"batch_id": args.batch, "written_to": where, **counts})
    else:
        terminal.say(f"{counts['files']} files of {counts['tasks']} tasks written to {where}"
                     + (f" ({counts['failed_tasks']} tasks had failed: no files)" if counts["failed_tasks"] else ""))
    return Exit.OK


async def cmd_cancel(client: Client, args) -> int:
    s = await client.cancel(args.batch)
    if args.json:
        terminal.json(s)
    else:
        terminal.line(f"batch {s.batch_id}: cancelled {s.cancelled}, succeeded {s.succeeded}, failed {s.failed}")
    return Exit.OK


# -- admin ---------------------------------------------------------------------------------------
async def cmd_keys(client: Client, args) -> int:
    reply = await client.keys()
    if args.json:
        for k in reply.keys:
            terminal.json(k)
        return Exit.OK
    rows = []
    for k in reply.keys:
        leases = ", ".join(f"{lease.holder}{' (zombie)' if lease.zombie else ''} {lease.ttl_ms / 1000:.1f}s" for lease in k.leases)
        rows.append((k.id, k.alias, k.limit or "∞", k.in_use, k.waiting,
                     leases + (" [quarantined]" if k.quarantined else "")))
    terminal.table(("key", "alias", "limit", "in use", "waiting", "leases"), rows, whole=("key",))
    return Exit.OK


async def cmd_keys_new(client: None, args) -> int:
    try:
        made = new_key(args.role, args.name or "")
    except ValueError as exc:
        terminal.fail(str(exc))
        return Exit.USAGE
    if args.json:
        terminal.json({"name": made.name, "role": made.role, "key": made.key, "entry": made.entry})
        return Exit.OK
    terminal.line(f"key: {made.key}")
    terminal.line(f"entry: {made.entry}")
    terminal.say("Give the key to its user (IMAGEMESH_API_KEY); it is not stored anywhere. Add the entry to the "
                 "gateway's IMAGEMESH_API_KEYS (comma-separated) or IMAGEMESH_API_KEYS_FILE (one per line).")
    return Exit.OK


async def cmd_set_limit(client: Client, args) -> int:
    k = await client.set_key_limit(args.key, args.limit)
    if args.json:
        terminal.json(k)
    else:
        terminal.line(f"{k.id} ({k.alias}): limit {k.limit}, in use {k.in_use}")
    return Exit.OK


async def cmd_workers(client: Client, args) -> int:
    workers = (await client.workers()).workers
    if args.json:
        for w in workers:
            terminal.json(w)
        return Exit.OK
    terminal.table(("worker", "pool", "capacity", "in flight", "device", "draining"),
                   [(w.worker_id, w.pool, w.capacity, w.in_flight, w.device, "yes" if w.draining else "")
                    for w in workers], whole=("worker",))
    return Exit.OK


async def cmd_providers(client: Client, args) -> int:
    providers = (await client.providers()).providers
    if args.json:
        for p in providers:
            terminal.json(p)
        return Exit.OK
    terminal.table(("provider", "circuit", "recent ok", "recent failed"),
                   [(p.name, p.circuit, p.recent_successes, p.recent_failures) for p in providers])
    return Exit.OK


# -- the command table ---------------------------------------------------------------------------
def _common_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Options every command takes, before or after its name. Only the top-level parser holds
    defaults (a subcommand's SUPPRESS leaves the top-level value alone). The API key's value is
    never shown in --help."""
    def default(value):
        return value if top else argparse.SUPPRESS

    parser.add_argument("--gateway", default=default(os.environ.get("IMAGEMESH_GATEWAY", "127.0.0.1:50051")),
                        help="gateway address (env IMAGEMESH_GATEWAY; default 127.0.0.1:50051)")
    parser.add_argument("--api-key", default=default(os.environ.get("IMAGEMESH_API_KEY", "")),
                        help="your API key (env IMAGEMESH_API_KEY)")
    parser.add_argument("--wait", nargs="?", type=float, const=WAIT_BUDGET, default=default(None), metavar="SECONDS",
                        help=f"wait for the gateway to answer this long (without a number: {WAIT_BUDGET:.0f} s); "
                             f"by default give up after {DEFAULT_BUDGET:.0f} s")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="exact JSON lines on stdout, one per event or item")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagemesh", description="ImageMesh command-line client",
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, run, help: str, **defaults) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, epilog=EXIT_CODES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        _common_options(p, top=False)
        p.set_defaults(run=run, **defaults)
        return p

    p = command("submit", cmd_submit, "submit a tasks file and stream results as they finish",
                prepare=prepare_submit)
    p.add_argument("file", help="tasks file (JSON): see the README")
    p.add_argument("--out", help="write successful_results / failed_results JSON here")
    p.add_argument("--download", help="save every output into DIR/<task index>/<filename> as results arrive")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p = command("status", cmd_status, "a batch's counts")
    p.add_argument("batch")
    p.add_argument("--tasks", action="store_true", help="list every task")
    p = command("watch", cmd_watch, "replay a batch's events, then follow until the summary")
    p.add_argument("batch")
    p.add_argument("--after", default="", help="cursor to resume after")
    p = command("download", cmd_download, "save every output of a batch (follows it until it ends)",
                prepare=prepare_download)
    p.add_argument("batch")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--dir", help="into DIR/<task index>/<filename> (existing files are kept)")
    where.add_argument("--zip", help="into a new ZIP file (entries <task index>/<filename>)")
    p = command("cancel", cmd_cancel, "cancel a batch")
    p.add_argument("batch")
    p = command("keys", cmd_keys, "provider keys, limits and leases (admin); `keys new` makes an API key")
    new = p.add_subparsers(dest="keys_command", metavar="new").add_parser(
        "new", help="make an API key and its IMAGEMESH_API_KEYS entry (local: needs no gateway)",
        description="Print a fresh random API key and the exact name:role:sha256hex entry for the gateway's "
                    "IMAGEMESH_API_KEYS.")
    _common_options(new, top=False)
    new.add_argument("--role", required=True, choices=ROLES)
    new.add_argument("--name", help="the key's tenant name (A-Z a-z 0-9 _ . -); default: from the hash")
    new.set_defaults(run=cmd_keys_new, local=True)
    p = command("set-limit", cmd_set_limit, "change a key's concurrency limit mesh-wide (admin)")
    p.add_argument("key", help="key id (provider:fingerprint, see `imagemesh keys`) or alias")
    p.add_argument("limit", type=int)
    command("workers", cmd_workers, "connected workers (admin)")
    command("providers", cmd_providers, "providers and their circuits (admin)")
    return parser


# -- running a command ---------------------------------------------------------------------------
async def amain(args) -> int:
    if getattr(args, "local", False):
        return await args.run(None, args)
    async with Client(args.gateway, args.api_key) as client:
        budget = DEFAULT_BUDGET if args.wait is None else max(0.0, args.wait)
        # The Client's own channel: the probe must use its address and transport settings.
        await reach(client._channel, args.gateway, budget, terminal.say, waiting=args.wait is not None)
        return await args.run(client, args)


def run(argv: list[str] | None = None) -> int:
    """Parse, check, run; every failure becomes one line on stderr and an `Exit` code."""
    args = build_parser().parse_args(argv)  # usage errors: argparse's message, exit 2
    try:
        if not getattr(args, "local", False) and not args.api_key:
            terminal.fail("no API key: pass --api-key or set IMAGEMESH_API_KEY (`imagemesh keys new` makes one)")
            return Exit.USAGE
        if hasattr(args, "prepare"):
            args.prepare(args)
        return asyncio.run(amain(args))
    except (TasksFileError, UsageError, RequestTooLarge) as exc:
        terminal.fail(str(exc))
        return Exit.USAGE
    except grpc.aio.AioRpcError as exc:
        terminal.fail(f"{exc.code().name}: {exc.details()}")
        return Exit.UNREACHABLE if exc.code() in TRY_LATER else Exit.REFUSED
    except (GatewayUnreachable, ConnectionError) as exc:
        terminal.fail(str(exc))
        return Exit.UNREACHABLE
    except BrokenPipeError:
        # Whoever read stdout stopped (`| head`): no traceback, and no second error at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return Exit.BROKEN_PIPE
    except KeyboardInterrupt:
        return Exit.INTERRUPTED


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
