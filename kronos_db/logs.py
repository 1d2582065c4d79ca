"""What a job is doing right now: its name and its steps, for log lines and for Ctrl-C.

The library logs through :mod:`logging` (``kronos_db.*`` loggers) and renders nothing; this
module gives every record the **job** it belongs to (``expire-sessions``, ``rotate-partitions``,
a command such as ``backup create``) and keeps the stack of **steps** under way, each with its
start time and what an interruption would leave behind. The CLI formats the records (text or
JSON lines) and, on Ctrl-C, says which step was interrupted and in what state it left the
database; a program using the library can do the same with :func:`current_steps`.

    with logs.job("expire-sessions"):
        with logs.step("delete expired sessions", interrupted=lambda: "batches so far are kept"):
            ...

A step logs its duration at INFO when it ends (``-v`` shows it), with the locks it took when
the caller names them. Observers (:func:`observed`) are told when a step starts, progresses
(:meth:`Step.progress`) and ends: the CLI draws a progress line on a terminal for any step
that runs over a second, whatever library code it is in.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

logger = logging.getLogger("kronos_db")

_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("kronos_db_job", default=None)
_steps: contextvars.ContextVar[tuple[Step, ...]] = contextvars.ContextVar(
    "kronos_db_steps", default=()
)
# the steps an interruption went through, innermost first, with their states at that moment
_interrupted: list[tuple[Step, str]] = []


@dataclasses.dataclass(eq=False)
class Step:
    """A step under way: what it does, since when, and the state an interruption leaves."""

    description: str
    started: float
    job: str | None
    interrupted: Callable[[], str] | None = None
    locks: str = ""
    done: float = 0  # progress, in the step's own unit
    total: float | None = None
    detail: str = ""  # how far it is, for people: "240000 rows, 12 batches"

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def state(self) -> str:
        """What an interruption now would leave behind (empty when the step says nothing)."""
        return self.interrupted() if self.interrupted is not None else ""

    def progress(self, done: float, *, total: float | None = None, detail: str = "") -> None:
        """Tell the observers how far the step is."""
        self.done, self.detail = done, detail
        if total is not None:
            self.total = total
        for observer in tuple(_observers):
            observer.step_progressed(self)


class StepObserver(Protocol):
    """Told of every step: the CLI's progress lines are one."""

    def step_started(self, step: Step) -> None: ...

    def step_progressed(self, step: Step) -> None: ...

    def step_finished(self, step: Step) -> None: ...


_observers: list[StepObserver] = []


@contextmanager
def observed(observer: StepObserver) -> Iterator[StepObserver]:
    """``observer`` is told of every step started in the block (in any thread)."""
    _observers.append(observer)
    try:
        yield observer
    finally:
        _observers.remove(observer)


def current_step() -> Step | None:
    """The innermost step under way, if any: where a loop reports its progress."""
    steps = _steps.get()
    return steps[-1] if steps else None


def current_job() -> str | None:
    return _job.get()


def current_steps() -> tuple[Step, ...]:
    """The steps under way, outermost first."""
    return _steps.get()


def interrupted_steps() -> list[tuple[Step, str]]:
    """The steps the last interruption (KeyboardInterrupt) went through, innermost first, each
    with the state it said the interruption left."""
    return list(_interrupted)


@contextmanager
def job(name: str) -> Iterator[None]:
    """Every record logged in the block belongs to job ``name``."""
    token = _job.set(name)
    try:
        yield
    finally:
        _job.reset(token)


@contextmanager
def step(
    description: str,
    *,
    interrupted: Callable[[], str] | str | None = None,
    locks: str = "",
    log: logging.Logger | None = None,
) -> Iterator[Step]:
    """Run a step: logged with its duration (and ``locks``, what it locks) at INFO when it ends.

    ``interrupted`` says what state an interruption during the step leaves (a callable is
    asked at the moment of the interruption, so it can count what is done).
    """
    state = (lambda: interrupted) if isinstance(interrupted, str) else interrupted
    current = Step(description, time.monotonic(), _job.get(), state, locks)
    token = _steps.set((*_steps.get(), current))
    for observer in tuple(_observers):
        observer.step_started(current)
    try:
        yield current
    except KeyboardInterrupt:
        _interrupted.append((current, current.state()))
        raise
    finally:
        _steps.reset(token)
        for observer in tuple(_observers):
            observer.step_finished(current)
    where = f" ({locks})" if locks else ""
    (log or logger).info(
        "%s: %.0f ms%s",
        description,
        current.seconds * 1000,
        where,
        extra={"step": description, "duration_ms": round(current.seconds * 1000, 1)},
    )


def locks_held(conn: Any) -> str:
    """The table-level locks the session of ``conn`` (a psycopg connection) holds now, for a log
    line: ``AccessExclusiveLock on backups; RowExclusiveLock on kronos_migrations``."""
    from kronos_db.resources import query

    rows = conn.execute(query("logs", "select_locks_held")).fetchall()
    return "; ".join(f"{mode} on {relations}" for mode, relations in rows) or "none"


class JobFilter(logging.Filter):
    """Sets ``record.job`` to the job under way (or ``default``) on every record."""

    def __init__(self, default: Callable[[], str | None] = lambda: None) -> None:
        super().__init__()
        self.default = default

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "job", None):
            record.job = _job.get() or self.default() or ""
        return True


__all__ = [
    "JobFilter",
    "Step",
    "StepObserver",
    "current_job",
    "current_step",
    "current_steps",
    "interrupted_steps",
    "job",
    "locks_held",
    "observed",
    "step",
]
