"""Adopting a Kronos database that kronos-db did not build: ``kronos-db adopt``.

The services first ran on a database created from the original design's DDL (``timestamp``
without time zone, ``serial`` ids, an unpartitioned ``logs``, none of head's constraints,
indexes and triggers), and it is full of data. This package brings such a database, or any
state between it and head, under kronos-db in place, with the services running:

* :mod:`~kronos_db.adopt.catalog` reads what the database holds;
* :mod:`~kronos_db.adopt.rules` finds the rows that break what head adds, and fixes or
  quarantines them as the user chose;
* :mod:`~kronos_db.adopt.steps` lists the steps to revision 0010, each with its lock and cost;
* :mod:`~kronos_db.adopt.engine` plans, then applies them one by one, resumably;
* :mod:`~kronos_db.adopt.quarantine` keeps what was moved out, restorable.

See ``docs/adopting.md``.
"""

from __future__ import annotations

from kronos_db.adopt.engine import (
    AdoptionBlockedError,
    AdoptionError,
    AdoptionPlan,
    AdoptionResult,
    PlannedStep,
    StepResult,
    apply,
    plan,
)
from kronos_db.adopt.rules import RULE_NAMES, Violation
from kronos_db.adopt.steps import ADOPTION_REVISION

__all__ = [
    "ADOPTION_REVISION",
    "RULE_NAMES",
    "AdoptionBlockedError",
    "AdoptionError",
    "AdoptionPlan",
    "AdoptionResult",
    "PlannedStep",
    "StepResult",
    "Violation",
    "apply",
    "plan",
]
