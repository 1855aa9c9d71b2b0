"""The package's version, at the bottom floor so that any stage can read it without importing ``allstudy``'s API."""

__version__ = "0.1.0"
