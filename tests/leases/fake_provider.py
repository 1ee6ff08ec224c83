"""A fake provider HTTP API that counts, per token, the jobs in flight and the most ever seen.

`POST /run?ms=N` with `Authorization: Bearer <token>` runs a job of N ms. The job counts as in
flight for its whole duration even if the client goes away (a real provider keeps running a job
whose caller was killed), which is exactly what the leases must account for.
`GET /stats` returns `{token: {"in_flight", "max", "done"}}`.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from aiohttp import web


class FakeProvider:
    def __init__(self) -> None:
        self.in_flight: dict[str, int] = defaultdict(int)
        self.max_seen: dict[str, int] = defaultdict(int)
        self.done: dict[str, int] = defaultdict(int)
        self._jobs: set[asyncio.Task] = set()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _job(self, token: str, ms: int) -> None:
        self.in_flight[token] += 1
        self.max_seen[token] = max(self.max_seen[token], self.in_flight[token])
        try:
            await asyncio.sleep(ms / 1000)
        finally:
            self.in_flight[token] -= 1
            self.done[token] += 1

    async def _run(self, request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        job = asyncio.create_task(self._job(token, int(request.query.get("ms", "100"))))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
        await asyncio.shield(job)  # a vanished client does not stop the job
        return web.json_response({"ok": True})

    async def _stats(self, _request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    def stats(self) -> dict:
        return {t: {"in_flight": self.in_flight[t], "max": self.max_seen[t], "done": self.done[t]}
                for t in set(self.in_flight) | set(self.done)}

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/run", self._run)
        app.router.add_get("/stats", self._stats)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        for job in list(self._jobs):
            job.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
