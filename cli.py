"""Run kronos-db from a checkout without installing it: ``python cli.py migrate``."""

from kronos_db.cli import main

if __name__ == "__main__":
    main()
