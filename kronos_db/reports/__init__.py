"""DBA reports and health checks: one module per concern, like PgHero's.

Each module runs the SQL of ``sql/queries/reports_<concern>.sql`` through
:func:`kronos_db.reports.runner.fetch` (its own short transaction, ``statement_timeout`` and
``lock_timeout``) and returns frozen dataclasses; :mod:`kronos_db.reports.health` turns them
into checks with a status. Nothing here renders for a terminal: the CLI does.
"""
