"""Retention's archive files: a table written as gzip'd COPY text, made durable before it counts,
and its rows counted back from disk.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql


def archive_table(conn: psycopg.Connection[Any], table: sql.Identifier, path: Path) -> int:
    """Write ``table`` to ``path`` as gzip'd COPY text (one line per row); return the rows sent.

    Written to a temporary name, fsync'd, renamed, and the directory fsync'd: a file with the
    final name is complete and stays so through a crash. A rerun overwrites it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    rows = 0
    with partial.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb") as compressed:
        with conn.cursor() as cur, cur.copy(sql.SQL("COPY {} TO STDOUT").format(table)) as copy:
            for chunk in copy:
                data = bytes(chunk)
                rows += data.count(b"\n")
                compressed.write(data)
        compressed.flush()
        compressed.close()
        raw.flush()
        os.fsync(raw.fileno())
    partial.replace(path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return rows


def count_archive_rows(path: Path) -> int:
    """Rows in an archive file, read back from disk (COPY text: newlines inside are escaped)."""
    rows = 0
    with gzip.open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            rows += chunk.count(b"\n")
    return rows
