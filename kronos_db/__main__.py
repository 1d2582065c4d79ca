"""``python -m kronos_db``: the same as the ``kronos-db`` command."""

from kronos_db.cli import main

main()
