"""Transitional: ``kronos_db/partitions.py`` moved whole to :mod:`kronos_db.partitions.executor`
so that its history follows; the next commit splits it along its seams."""

from kronos_db.partitions.executor import *  # noqa: F403
