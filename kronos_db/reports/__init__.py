"""DBA reports and health checks: one module per concern, like PgHero's.

Each module runs the SQL of ``sql/queries/reports_<concern>.sql`` through
:func:`kronos_db.checks.fetch` (its own short transaction, ``statement_timeout`` and
``lock_timeout``), returns frozen dataclasses, and answers its own health checks
(``check_…(ctx) -> Outcome``); :mod:`kronos_db.reports.health` only collects them.
Nothing here renders for a terminal: the CLI does.
"""
