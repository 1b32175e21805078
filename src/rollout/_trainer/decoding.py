"""A trainer's answer body, decoded within a byte limit.

A compressed body is inflated a bounded piece at a time (zlib's ``max_length``), so that a
small body on the wire (a "zip bomb": gzip inflates up to ~1,000x) never becomes more than
the limit in memory. httpx's own decoders inflate each chunk read whole (64 KiB of gzip
could become 64 MiB) before any limit can be checked. Encodings: none (``identity``),
``gzip`` and ``deflate`` (zlib-wrapped or raw, as httpx accepts), the ones the client asks
for; any other is refused rather than passed through undecoded (docs/PROTOCOL.md §4.2).
"""

from __future__ import annotations

import zlib

import httpx

__all__ = ["TooLarge", "read_decoded"]

_WBITS = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}


class TooLarge(Exception):
    """The body decodes to more than the limit; nothing past the limit was kept."""


class _Inflater:
    """One ``Content-Encoding``'s decoder; :meth:`feed` returns at most ``room + 1`` bytes."""

    def __init__(self, encoding: str) -> None:
        if encoding not in _WBITS:
            raise httpx.DecodingError(
                f"the trainer answered with Content-Encoding {encoding!r}, which was not asked for"
            )
        self._encoding = encoding
        self._zlib = zlib.decompressobj(_WBITS[encoding])
        self._started = False

    def feed(self, data: bytes, room: int) -> bytes:
        try:
            out = self._zlib.decompress(data, room + 1)
        except zlib.error as exc:
            if self._encoding != "deflate" or self._started:
                raise httpx.DecodingError(f"invalid {self._encoding} body: {exc}") from None
            # Some servers send raw deflate, without the zlib header: httpx accepts it too.
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
            self._started = True
            return self.feed(data, room)
        self._started = True
        pieces = [out]
        room -= len(out)
        while room >= 0 and self._zlib.unconsumed_tail:
            out = self._zlib.decompress(self._zlib.unconsumed_tail, room + 1)
            pieces.append(out)
            room -= len(out)
        return b"".join(pieces)


async def read_decoded(response: httpx.Response, limit: int, *, truncate: bool = False) -> bytes:
    """``response``'s body decoded per its ``Content-Encoding``: at most ``limit`` bytes.

    Past ``limit`` it stops reading and raises :class:`TooLarge`, or, with ``truncate``,
    returns the first ``limit`` bytes. Raises :class:`httpx.DecodingError` for a body that
    does not decode or an encoding not asked for, and httpx's transport errors."""
    if response.is_stream_consumed:  # loaded and decoded by httpx (made with content=)
        body = response.content
        if len(body) > limit and not truncate:
            raise TooLarge
        return body[:limit]
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    inflater = None if encoding in ("", "identity") else _Inflater(encoding)
    chunks: list[bytes] = []
    room = limit
    async for raw in response.aiter_raw():
        chunk = raw if inflater is None else inflater.feed(raw, room)
        if len(chunk) > room:
            if truncate:
                chunks.append(chunk[:room])
                break
            raise TooLarge
        chunks.append(chunk)
        room -= len(chunk)
    return b"".join(chunks)
