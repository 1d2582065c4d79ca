"""kronos_db.api: the examples of docs/library.md run, in order, against a fresh database; and
the package is typed and licensed as it says."""

from __future__ import annotations

import inspect
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, unique_name, url_for

from kronos_db import api, db
from kronos_db.config import Settings

DOC = REPO / "docs" / "library.md"


def test_the_examples_of_the_library_doc_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    name = unique_name("kronos_library")
    monkeypatch.setenv("KRONOS_DATABASE_URL", url_for(name))
    monkeypatch.setenv("KRONOS_BACKUPS_DIRECTORY", str(tmp_path / "backups"))
    monkeypatch.chdir(tmp_path)  # no kronos.toml around
    blocks = re.findall(r"^```python\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.S | re.M)
    assert len(blocks) >= 8
    namespace: dict[str, Any] = {"__name__": "library_doc"}
    caplog.set_level(logging.INFO, logger="kronos_db")
    try:
        for number, block in enumerate(blocks, start=1):
            code = compile(block, f"{DOC.name}, example {number}", "exec")
            exec(code, namespace)  # noqa: S102 - our own documentation's examples
    finally:
        db.drop_database(db.resolve_target(url_for(name), Settings()))
    assert namespace["state"].up_to_date
    assert namespace["verified"].passed
    assert any(getattr(record, "job", "") == "expire-sessions" for record in caplog.records)


def test_every_function_of_the_api_is_documented_with_the_one_convention() -> None:
    text = DOC.read_text(encoding="utf-8")
    for name in api.__all__:
        function = getattr(api, name)
        if not inspect.isfunction(function):
            continue
        assert f"api.{name}(" in text, f"api.{name} is not in docs/library.md"
        assert function.__doc__, name
        parameters = list(inspect.signature(function).parameters.values())
        if name in ("load_settings", "target"):
            continue
        assert parameters[1].name == "settings", f"api.{name}: settings second"
        assert parameters[0].name in ("source", "target"), f"api.{name}: the database first"
        if "now" in inspect.signature(function).parameters:
            assert (
                inspect.signature(function).parameters["now"].kind is inspect.Parameter.KEYWORD_ONLY
            )


def test_the_package_is_typed_and_licensed() -> None:
    assert (REPO / "kronos_db" / "py.typed").is_file()
    license_text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License")
    assert 'license = "MIT"' in (REPO / "pyproject.toml").read_text(encoding="utf-8")
