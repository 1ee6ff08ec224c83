"""The pod-deletion-cost annotation, against a stand-in of the Kubernetes API (real HTTP)."""

from __future__ import annotations

from aiohttp import web

from imagemesh.podcost import ANNOTATION, PodDeletionCost


async def test_cost_follows_in_flight_work_with_merge_patches():
    patches = []

    async def patch(request: web.Request) -> web.Response:
        patches.append((request.path, request.headers["Content-Type"], request.headers["Authorization"],
                        await request.json()))
        return web.json_response({})

    app = web.Application()
    app.router.add_patch("/api/v1/namespaces/{ns}/pods/{pod}", patch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        cost = PodDeletionCost(namespace="imagemesh", pod="gen-1", api_url=f"http://127.0.0.1:{port}",
                               token="sa-token", min_interval=0)
        await cost.update(3)
        await cost.update(3)  # unchanged: nothing sent
        await cost.update(0)
        await cost.aclose()
    finally:
        await runner.cleanup()
    assert [p[3]["metadata"]["annotations"][ANNOTATION] for p in patches] == ["3", "0"]
    path, content_type, auth, _ = patches[0]
    assert path == "/api/v1/namespaces/imagemesh/pods/gen-1"
    assert content_type == "application/merge-patch+json" and auth == "Bearer sa-token"


async def test_unreachable_api_is_not_fatal():
    cost = PodDeletionCost(namespace="n", pod="p", api_url="http://127.0.0.1:9", token="t", min_interval=0)
    await cost.update(1)  # connection refused: logged once, no exception
    await cost.aclose()


def test_outside_kubernetes_it_is_off(monkeypatch):
    monkeypatch.delenv("IMAGEMESH_POD_NAME", raising=False)
    assert PodDeletionCost.from_environment() is None
