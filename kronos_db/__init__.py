"""kronos-db: schema-first migrations and DBA toolkit for the Kronos PostgreSQL database."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kronos-db")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
