"""The installed package's version, for the ``User-Agent`` of trainer calls and the OpenAPI
document."""

from __future__ import annotations

import importlib.metadata

__all__ = ["version"]


def version() -> str:
    """The version of the installed ``rollout`` package; "0" when run from a checkout
    that was never installed."""
    try:
        return importlib.metadata.version("rollout")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
        return "0"
