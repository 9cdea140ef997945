"""Loading datalists for the bundles, with errors that name the file and the problem."""

from .datalist import DatalistError, load_datalist

__all__ = ["DatalistError", "load_datalist"]
