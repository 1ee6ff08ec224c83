"""`imagemesh`: submit batches and watch them from a terminal.

    imagemesh submit tasks.json [--out results.json] [--download DIR]
    imagemesh status BATCH | watch BATCH [--after CURSOR] | cancel BATCH
    imagemesh download BATCH (--dir DIR | --zip FILE.zip)
    imagemesh keys | set-limit KEY LIMIT | workers | providers          (admin key)

A tasks file is a JSON list of tasks, or an object {"tasks": [...], "credentials": {...},
"batch_id": "..."}. A task is either the short form
    {"prompt": "...", "output_filename": "fox.png", "model": "...", "providers": ["local"],
     "num_outputs": 1, "input": {"seed": 1}, "labels": {...}}
    {"enhance": {"image_path": "face.jpg", "upscale": 2, "restore_faces": true}, "output_filename": "..."}
or the protobuf JSON form of `imagemesh.v1.Task` ({"generate": {...}} / {"enhance": {...}}).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

import grpc
import httpx
from google.protobuf import json_format
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from imagemesh import downloads
from imagemesh.client import Client
from imagemesh.v1 import imagemesh_pb2 as pb

console = Console(stderr=True)
out = Console()

SHORT_GENERATE = ("prompt", "model", "providers", "num_outputs", "race", "input", "inline_outputs")


def parse_task(raw: dict[str, Any], base: Path) -> pb.Task:
    """One task from its JSON form. Raises ValueError naming what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError("a task must be a JSON object")
    raw = dict(raw)
    enhance = raw.get("enhance")
    if isinstance(enhance, dict) and "image_path" in enhance:
        enhance = dict(enhance)
        path = base / enhance.pop("image_path")
        enhance["image"] = base64.b64encode(path.read_bytes()).decode()
        raw["enhance"] = enhance
    if "generate" not in raw and "enhance" not in raw:
        raw["generate"] = {k: raw.pop(k) for k in SHORT_GENERATE if k in raw}
        if "prompt" not in raw["generate"]:
            raise ValueError("a task needs a prompt (or a generate/enhance object)")
    return json_format.ParseDict(raw, pb.Task())


def load_tasks(path: Path) -> tuple[list[pb.Task], dict[str, str], str]:
    doc = json.loads(path.read_text())
    if isinstance(doc, list):
        doc = {"tasks": doc}
    tasks = []
    for i, raw in enumerate(doc.get("tasks", [])):
        try:
            tasks.append(parse_task(raw, path.parent))
        except (ValueError, json_format.ParseError, OSError) as exc:
            raise SystemExit(f"{path}: task {i}: {exc}")
    return tasks, dict(doc.get("credentials", {})), str(doc.get("batch_id", ""))


def describe(task: pb.Task) -> str:
    if task.HasField("generate"):
        return task.generate.prompt
    return "enhance"


async def cmd_submit(client: Client, args) -> int:
    tasks, credentials, batch_id = load_tasks(Path(args.file))
    if not tasks:
        raise SystemExit(f"{args.file}: no tasks")
    report: dict[str, Any] = {"batch_id": "", "successful_results": [], "failed_results": []}
    download = Path(args.download) if args.download else None
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, disable=args.no_progress)
    http = httpx.AsyncClient()
    with progress:
        bar = progress.add_task("submitting", total=len(tasks))
        async for event in client.submit(tasks, credentials=credentials, batch_id=batch_id or None):
            if event.HasField("accepted"):
                report["batch_id"] = event.batch_id
                progress.update(bar, description=f"batch {event.batch_id}")
            elif event.HasField("result"):
                r = event.result
                task = tasks[r.task_index]
                row = {"task_index": r.task_index, "prompt": describe(task), "output_filename": r.output_filename}
                if r.state == pb.SUCCEEDED:
                    row["generated_files"] = (await downloads.save_result(client, event.batch_id, r, download, http)
                                              if download else [downloads.entry(f) for f in r.files])
                    row["provider"] = r.provider
                    report["successful_results"].append(row)
                    names = ", ".join(f.filename for f in r.files)
                    how = f"{r.provider}, {r.model}" if r.model else r.provider
                    progress.console.print(f"[green]✓[/] #{r.task_index} {names} "
                                           f"[dim]({how}, {r.timings.total_ms} ms)[/]")
                else:
                    row["error"] = {"code": r.error.code, "message": r.error.message}
                    report["failed_results"].append(row)
                    progress.console.print(f"[red]✗[/] #{r.task_index} {pb.TaskState.Name(r.state)} "
                                           f"{r.error.code}: {r.error.message}")
                progress.advance(bar)
            elif event.HasField("summary"):
                s = event.summary
                report["summary"] = json_format.MessageToDict(s, always_print_fields_with_no_presence=True)
                progress.console.print(f"[bold]batch {event.batch_id}[/]: {s.succeeded} succeeded, "
                                       f"{s.failed} failed, {s.cancelled} cancelled in {s.duration_ms / 1000:.2f}s")
    await http.aclose()
    for key in ("successful_results", "failed_results"):
        report[key].sort(key=lambda row: row["task_index"])
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
        console.print(f"results written to {args.out}")
    return 0 if not report["failed_results"] else 1


async def cmd_status(client: Client, args) -> int:
    s = await client.status(args.batch)
    out.print(f"batch {s.batch_id}: total {s.total}, queued {s.queued}, running {s.running}, "
              f"succeeded {s.succeeded}, failed {s.failed}, cancelled {s.cancelled}{', done' if s.done else ''}")
    if args.tasks:
        for t in s.tasks:
            out.print(f"  #{t.task_index} {pb.TaskState.Name(t.state)} attempts={t.attempts} {t.output_filename}")
    return 0


async def cmd_watch(client: Client, args) -> int:
    async for event in client.watch(args.batch, args.after):
        out.print(json_format.MessageToJson(event, indent=None) if args.json else _event_line(event))
    return 0


def _event_line(event: pb.BatchEvent) -> str:
    kind = event.WhichOneof("event")
    if kind == "result":
        r = event.result
        what = ", ".join(f.filename for f in r.files) if r.state == pb.SUCCEEDED else f"{r.error.code}: {r.error.message}"
        return f"{event.cursor} result #{r.task_index} {pb.TaskState.Name(r.state)} {what}"
    if kind == "summary":
        s = event.summary
        return f"{event.cursor} summary {s.succeeded} succeeded, {s.failed} failed, {s.cancelled} cancelled"
    return f"{event.cursor} {kind}"


async def cmd_download(client: Client, args) -> int:
    try:
        counts = await downloads.download_batch(client, args.batch, directory=Path(args.dir) if args.dir else None,
                                                zip_path=Path(args.zip) if args.zip else None)
    except downloads.DownloadFailed as exc:
        console.print(f"[red]download failed[/]: {exc}")
        return 1
    where = args.zip or args.dir
    console.print(f"{counts['files']} files of {counts['tasks']} tasks written to {where}"
                  + (f" ({counts['failed_tasks']} tasks had failed: no files)" if counts["failed_tasks"] else ""))
    return 0


async def cmd_cancel(client: Client, args) -> int:
    s = await client.cancel(args.batch)
    out.print(f"batch {s.batch_id}: cancelled {s.cancelled}, succeeded {s.succeeded}, failed {s.failed}")
    return 0


async def cmd_keys(client: Client, args) -> int:
    reply = await client.keys()
    table = Table("key", "alias", "limit", "in use", "waiting", "leases")
    for k in reply.keys:
        leases = ", ".join(f"{l.holder}{' (zombie)' if l.zombie else ''} {l.ttl_ms / 1000:.1f}s" for l in k.leases)
        table.add_row(k.id, k.alias, str(k.limit) if k.limit else "∞", str(k.in_use), str(k.waiting),
                      leases + (" [quarantined]" if k.quarantined else ""))
    out.print(table)
    return 0


async def cmd_set_limit(client: Client, args) -> int:
    k = await client.set_key_limit(args.key, args.limit)
    out.print(f"{k.id} ({k.alias}): limit {k.limit}, in use {k.in_use}")
    return 0


async def cmd_workers(client: Client, args) -> int:
    table = Table("worker", "pool", "capacity", "in flight", "device", "draining")
    for w in (await client.workers()).workers:
        table.add_row(w.worker_id, w.pool, str(w.capacity), str(w.in_flight), w.device, "yes" if w.draining else "")
    out.print(table)
    return 0


async def cmd_providers(client: Client, args) -> int:
    table = Table("provider", "circuit", "recent ok", "recent failed")
    for p in (await client.providers()).providers:
        table.add_row(p.name, p.circuit, str(p.recent_successes), str(p.recent_failures))
    out.print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagemesh", description="ImageMesh command-line client")
    parser.add_argument("--gateway", default=os.environ.get("IMAGEMESH_GATEWAY", "127.0.0.1:50051"),
                        help="gateway address [env IMAGEMESH_GATEWAY]")
    parser.add_argument("--api-key", default=os.environ.get("IMAGEMESH_API_KEY", ""),
                        help="your API key [env IMAGEMESH_API_KEY]")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("submit", help="submit a tasks file and stream results as they finish")
    p.add_argument("file")
    p.add_argument("--out", help="write successful_results / failed_results JSON here")
    p.add_argument("--download", help="save every output into DIR/<task index>/<filename> as results arrive")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_submit)
    p = sub.add_parser("status", help="a batch's counts")
    p.add_argument("batch")
    p.add_argument("--tasks", action="store_true", help="list every task")
    p.set_defaults(run=cmd_status)
    p = sub.add_parser("watch", help="replay a batch's events, then follow until the summary")
    p.add_argument("batch")
    p.add_argument("--after", default="", help="cursor to resume after")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_watch)
    p = sub.add_parser("download", help="save every output of a batch (follows it until it ends)")
    p.add_argument("batch")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--dir", help="into DIR/<task index>/<filename> (existing files are kept)")
    where.add_argument("--zip", help="into a new ZIP file (entries <task index>/<filename>)")
    p.set_defaults(run=cmd_download)
    p = sub.add_parser("cancel", help="cancel a batch")
    p.add_argument("batch")
    p.set_defaults(run=cmd_cancel)
    sub.add_parser("keys", help="provider keys, limits and leases (admin)").set_defaults(run=cmd_keys)
    p = sub.add_parser("set-limit", help="change a key's concurrency limit mesh-wide (admin)")
    p.add_argument("key", help="key id (provider:fingerprint) or alias")
    p.add_argument("limit", type=int)
    p.set_defaults(run=cmd_set_limit)
    sub.add_parser("workers", help="connected workers (admin)").set_defaults(run=cmd_workers)
    sub.add_parser("providers", help="providers and their circuits (admin)").set_defaults(run=cmd_providers)
    return parser


async def amain(args) -> int:
    async with Client(args.gateway, args.api_key) as client:
        try:
            return await args.run(client, args)
        except grpc.aio.AioRpcError as exc:
            console.print(f"[red]{exc.code().name}[/]: {exc.details()}")
            return 2


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not args.api_key:
        raise SystemExit("no API key: pass --api-key or set IMAGEMESH_API_KEY")
    try:
        sys.exit(asyncio.run(amain(args)))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
