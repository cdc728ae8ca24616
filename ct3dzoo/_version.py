"""The package version (one place; ``ct3dzoo.__version__`` re-exports it)."""

__version__ = "0.1.0"
