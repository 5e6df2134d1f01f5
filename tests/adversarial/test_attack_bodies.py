"""Request bodies built to hurt: malformed and bomb-sized compressed bodies, and event
data nested deeper than any decoder should follow."""

from __future__ import annotations

import functools
import uuid
import zlib

import msgspec
import pytest
from adversary import Sidecar

pytestmark = pytest.mark.anyio

BOMB_SIZE = 200 * 1024 * 1024


@functools.cache
def _gzip_bomb() -> bytes:
    """200 MB of zeros, gzip-compressed in 1 MB steps (about 200 KB, built once)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    zeros = bytes(1024 * 1024)
    parts = [packer.compress(zeros) for _ in range(BOMB_SIZE // len(zeros))]
    return b"".join([*parts, packer.flush()])


def _binary_headers(encoding: str) -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-id": uuid.uuid4().hex,
        "ce-source": "/adversarial",
        "ce-type": "test.event",
        "Content-Type": "application/octet-stream",
        "Content-Encoding": encoding,
    }


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_malformed_compressed_body_is_400(sidecar: Sidecar, encoding: str) -> None:
    """A body that claims gzip or deflate but is not is a 400 saying so, not a 500."""
    before = sidecar.log_size()
    with sidecar.watch() as watch:
        answer = await sidecar.call(
            "POST",
            "/topics/t/events",
            data=b"this is not compressed at all" * 10,
            headers=_binary_headers(encoding),
        )
    watch.check()
    assert answer.status == 400, answer
    assert "Traceback" not in sidecar.log_since(before)
    await sidecar.assert_serves()


async def test_a_gzip_bomb_is_413_without_inflating_it(sidecar: Sidecar) -> None:
    """200 MB of zeros sent as 200 KB of gzip: 413 once the inflated body passes the
    size limit, with the sidecar's memory far below 200 MB of growth."""
    bomb = _gzip_bomb()
    assert len(bomb) < 1024 * 1024
    with sidecar.watch() as watch:
        answer = await sidecar.call(
            "POST", "/topics/t/events", data=bomb, headers=_binary_headers("gzip")
        )
    watch.check()
    assert answer.status == 413, answer
    assert answer.type == "EventTooLargeError", answer
    await sidecar.assert_serves()


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("depth", [100, 900, 985])
async def test_deeply_nested_data_is_400(sidecar: Sidecar, depth: int) -> None:
    """A structured event whose JSON data nests hundreds deep is refused with 400 (as
    on every connector, which could not encode it), not stored."""
    event = {"specversion": "1.0", "id": "deep", "source": "/a", "type": "t"}
    body = msgspec.json.encode(event)[:-1] + b',"data":' + _nested(depth) + b"}"
    with sidecar.watch() as watch:
        answer = await sidecar.call(
            "POST",
            "/topics/deep/events",
            data=body,
            headers={"Content-Type": "application/cloudevents+json"},
        )
    watch.check()
    assert answer.status == 400, answer
    assert answer.type in ("EventValidationError", "RejectedError"), answer
    await sidecar.assert_serves(topic="deep")
