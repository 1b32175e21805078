"""Trainers' answer bodies decoded within a byte limit (rollout._trainer.decoding): a
compressed body never becomes more than the limit in memory, however far it inflates."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import httpx
import pytest

from rollout._trainer.decoding import TooLarge, read_decoded


def _streamed(body: bytes, encoding: str | None, chunk: int = 64 * 1024) -> httpx.Response:
    """An answer as the pool gives it: a stream, read in ``chunk``-byte pieces."""

    class Chunks(httpx.AsyncByteStream):  # an iterator, like the pool's bodies
        def __init__(self) -> None:
            self.at = 0

        def __aiter__(self) -> Chunks:
            return self

        async def __anext__(self) -> bytes:
            if self.at >= len(body):
                raise StopAsyncIteration
            self.at += chunk
            return body[self.at - chunk : self.at]

    headers = {"content-encoding": encoding} if encoding else {}
    return httpx.Response(200, headers=headers, stream=Chunks())


async def test_a_gzip_bomb_is_refused_without_inflating_past_the_limit() -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)  # 64 MiB in ~64 KiB
    assert len(bomb) < 128 * 1024
    limit = 1024 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge):
            await read_decoded(_streamed(bomb, "gzip"), limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # httpx's decoder would hold one whole chunk inflated (~64 MiB) before any check.
    assert peak < 4 * limit + 4 * len(bomb)


async def test_compressed_bodies_within_the_limit_decode_whole() -> None:
    text = b'{"choices": []}' * 1000
    assert await read_decoded(_streamed(gzip.compress(text), "gzip", chunk=7), len(text)) == text
    assert await read_decoded(_streamed(zlib.compress(text), "deflate"), len(text)) == text
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw_deflate = raw.compress(text) + raw.flush()  # no zlib header: httpx accepts it too
    assert await read_decoded(_streamed(raw_deflate, "deflate"), len(text)) == text
    assert await read_decoded(_streamed(text, None), len(text)) == text
    assert await read_decoded(_streamed(text, "identity"), len(text)) == text


async def test_one_byte_past_the_limit_is_too_large_or_cut_off_when_truncating() -> None:
    text = b"x" * 1001
    with pytest.raises(TooLarge):
        await read_decoded(_streamed(gzip.compress(text), "gzip"), 1000)
    with pytest.raises(TooLarge):
        await read_decoded(_streamed(text, None, chunk=10), 1000)
    cut = await read_decoded(_streamed(gzip.compress(text), "gzip"), 300, truncate=True)
    assert cut == b"x" * 300


async def test_a_body_that_does_not_decode_or_an_encoding_not_asked_for_is_an_error() -> None:
    with pytest.raises(httpx.DecodingError, match="invalid gzip body"):
        await read_decoded(_streamed(b"not gzip at all", "gzip"), 1000)
    with pytest.raises(httpx.DecodingError, match="invalid deflate body"):
        await read_decoded(_streamed(b"\xff" * 20, "deflate"), 1000)
    with pytest.raises(httpx.DecodingError, match="'br', which was not asked for"):
        await read_decoded(_streamed(b"whatever", "br"), 1000)
