"""kronos-db: schema-first migrations and DBA toolkit for the Kronos PostgreSQL database.

The library's public API is described in ``docs/library.md``.
"""

from __future__ import annotations

import functools


@functools.cache
def _version() -> str:
    # importlib.metadata costs ~25 ms of imports: paid only by who asks for the version
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kronos-db")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "0.0.0+unknown"


def __getattr__(name: str) -> str:
    if name == "__version__":
        return _version()
    raise AttributeError(f"module 'kronos_db' has no attribute {name!r}")


__all__ = ["__version__"]
