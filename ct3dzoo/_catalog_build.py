"""Regenerate ``ct3dzoo/catalog.json`` from the live registry:

    python -m ct3dzoo._catalog_build

The catalog is a torch-free snapshot of the registry (architecture names, families,
default tags and every weights spec) so that ``ct3dzoo --help``, ``list`` and ``info`` answer
without importing torch. ``tests/test_layering.py`` fails when it is stale.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import _factory  # noqa: F401  (registers every family)
from ._io.atomic import atomic_write_text
from ._registry import _ARCHS, _WEIGHTS

__all__ = ["build", "main"]

CATALOG_PATH = Path(__file__).with_name("catalog.json")


def build() -> str:
    """The text of ``catalog.json`` for the current registry."""
    archs = {
        name: {
            "family": a.family,
            "default_tag": a.default_tag,
            "aliases": list(a.pretrain_aliases),
            "size_args": a.size_args,
            "doc": a.doc,
        }
        for name, a in sorted(_ARCHS.items())
    }
    weights = {name: w.to_dict() for name, w in sorted(_WEIGHTS.items())}
    return json.dumps({"archs": archs, "weights": weights}, indent=1) + "\n"


def main() -> None:
    atomic_write_text(CATALOG_PATH, build())
    print(f"wrote {CATALOG_PATH}")


if __name__ == "__main__":
    main()
