"""The partition lifecycle of the range-partitioned ``logs`` table: premake, rescue, retention.

Two library entry points, both taking ``now`` (UTC, tz-aware) so that tests and callers move
the clock:

* :func:`kronos_db.partitions.status.partition_status` — every partition, the default
  partition's rows, stray tables, unfinished retirements, how far coverage reaches ahead, what
  the next rotation would do, and one monitoring verdict (OK/WARNING/CRITICAL) that ``health``
  reports as is;
* :func:`kronos_db.partitions.rotation.rotate` — adopts stray tables, moves rows out of the
  default partition, creates the missing partitions and retires old ones, under an advisory
  lock per table; returns what it did (or, with ``dry_run``, the exact SQL it would run).

The promise, and how it is kept (``docs/partitions.md`` states the design and its lock budget):

* **Every acknowledged row is visible through the table exactly once, at every instant.** A
  row leaves the default partition only in the transaction that attaches the partition it
  moves into: readers see it in the default until that commit, in the partition after it. No
  row is ever in a table nobody can see, and a kill at any point rolls the transaction back.
* **The rescue of the range holding now terminates**: the bleeding is stopped first (a
  partition for the rest of the range, from a stop point a few seconds ahead, is attached, so
  new rows stop landing in the default partition), then the rows before the stop point move.
* **A service's insert waits at most ``lock_timeout`` behind a rotation** (``hold_timeout``
  more in the worst interleaving): every lock request runs under ``lock_timeout`` and gives up,
  rolling back, instead of queueing in front of the services; what holds a lock inserts wait
  on is a catalog change or one check of the default partition, cut off at ``hold_timeout``. A
  step that gives up retries after a jittered back-off within the run's ``budget``, then the
  next run, and says so.
* **Every step is resumable**: retirements mark the detached table before anything else; an
  archive is recorded in ``backups`` in the transaction that drops its table; a table left by
  an older kronos-db or a human mistake is adopted (attached with its rows) or reported with a
  command that keeps its rows.
* Settings are transaction-scoped (``set_config(..., true)``): nothing relies on session state,
  so every statement is correct through a transaction pooler.

Partition names follow pg_partman 4.x (``logs_p2026_11_25``…); a partition starting between
two interval boundaries (the stop point of a rescue) is named by its lower bound to the second
(``logs_p2026_11_25_101507``). The pg_partman backend lives in :mod:`kronos_db.partman`.

The package is its seams, each module importing only those below it (tests/test_imports.py
keeps the graph acyclic); this ``__init__`` imports nothing, so that importing one piece (or
``kronos_db.partman``) does not import the rest:

* :mod:`~kronos_db.partitions.naming` — UTC time arithmetic and partition names;
* :mod:`~kronos_db.partitions.catalog` — what the catalog says: the table, its partitions, the
  default partition's rows, retired tables, the native policy;
* :mod:`~kronos_db.partitions.backend` — the backend in force (ours or pg_partman's
  part_config) and the tables it keeps on purpose;
* :mod:`~kronos_db.partitions.plan` — what a rotation would do (:class:`Action`, :class:`Plan`);
* :mod:`~kronos_db.partitions.status` — the status and the monitoring check
  (``partitions status``, ``health``'s ``log_partitions``);
* :mod:`~kronos_db.partitions.runner` — how a step's SQL runs: lock timeouts, retries, the hold
  budget, batch sizes;
* :mod:`~kronos_db.partitions.ddl` — the DDL a step runs and the privileges of a new partition;
* :mod:`~kronos_db.partitions.archive` — retention's archive files;
* :mod:`~kronos_db.partitions.executor` — the steps of one rotation (:class:`_Rotation`);
* :mod:`~kronos_db.partitions.partman_rotation` — the same on the pg_partman backend (apart, so
  that ``status`` and ``health`` read pg_partman's policy without importing the executor);
* :mod:`~kronos_db.partitions.rotation` — :func:`rotate`: the lease, the plan, the steps in order.
"""
