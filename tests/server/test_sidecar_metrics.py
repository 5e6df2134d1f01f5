"""The sidecar's /metrics page is rendered off the event loop, one scrape at a time."""

from __future__ import annotations

import threading
from typing import Any

import aiohttp
import anyio
import pytest

from eventmesh.server.sidecar import Sidecar

pytestmark = pytest.mark.anyio

FREE_PORTS: dict[str, Any] = {"http": {"port": 0}, "grpc": {"port": 0}, "admin": {"port": 0}}


async def test_the_loop_answers_while_a_scrape_renders() -> None:
    """While /metrics renders, /healthz (the same event loop) is answered: the render
    runs in a worker thread. Before, it ran on the loop, so nothing was answered until
    it returned (about half a second for 1,000 subscriptions); here the render waits for
    the probe's answer, and says whether it came."""
    probed = threading.Event()

    def render() -> str:
        return f"# the probe was answered during the render: {probed.wait(timeout=10)}\n"

    async with (
        Sidecar({"server": FREE_PORTS}, metrics=render) as sidecar,
        aiohttp.ClientSession() as session,
    ):
        pages: list[str] = []

        async def scrape() -> None:
            async with session.get(sidecar.admin_url + "/metrics") as response:
                pages.append(await response.text())

        async with anyio.create_task_group() as tg:
            tg.start_soon(scrape)
            await anyio.wait_all_tasks_blocked()
            async with session.get(sidecar.admin_url + "/healthz") as response:
                assert response.status == 200
            probed.set()
    assert pages == ["# the probe was answered during the render: True\n"]


async def test_scrapes_render_one_at_a_time() -> None:
    """Ten scrapes at once do not render in ten threads: while the first render runs (it
    waits until every scrape has come in), the others wait for it, and each is then
    served a page."""
    everyone_in = threading.Event()
    inside = 0
    most_inside = 0

    def render() -> str:
        nonlocal inside, most_inside
        inside += 1
        most_inside = max(most_inside, inside)
        everyone_in.wait(timeout=10)
        inside -= 1
        return "# a page\n"

    async with (
        Sidecar({"server": FREE_PORTS}, metrics=render) as sidecar,
        aiohttp.ClientSession() as session,
    ):
        pages: list[str] = []

        async def scrape() -> None:
            async with session.get(sidecar.admin_url + "/metrics") as response:
                pages.append(await response.text())

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(scrape)
            await anyio.wait_all_tasks_blocked()
            everyone_in.set()
    assert pages == ["# a page\n"] * 10
    assert most_inside == 1
