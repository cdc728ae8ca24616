"""The package's structure: a one-way import graph, the catalog, public names only in docs."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "ct3dzoo"

#: the floors, bottom up; a module may import its own floor and the floors below
FLOORS = [
    ("ct3dzoo.errors", "ct3dzoo._version", "ct3dzoo._specs", "ct3dzoo._cli_args"),
    ("ct3dzoo._registry", "ct3dzoo._io"),
    ("ct3dzoo.data",),
    ("ct3dzoo.adapt", "ct3dzoo.heads", "ct3dzoo._features"),
    ("ct3dzoo._card", "ct3dzoo._publish", "ct3dzoo._model", "ct3dzoo._loading", "ct3dzoo.models"),
    (
        "ct3dzoo._builder",
        "ct3dzoo._saved",
        "ct3dzoo._factory",
        "ct3dzoo._catalog_build",
        "ct3dzoo._references",
    ),
    ("ct3dzoo.phantom", "ct3dzoo.train", "ct3dzoo.explain", "ct3dzoo.viz"),
    (
        "ct3dzoo.cli",
        "ct3dzoo.demo",
        "ct3dzoo._demo_model",
        "ct3dzoo._demo_output",
        "ct3dzoo.__main__",
    ),
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(current: str, is_pkg: bool, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        pkg = current.split(".") if is_pkg else current.split(".")[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([node.module] if node.module else []))
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.append(sub if _exists(sub) else base)
    return out


def _exists(module: str) -> bool:
    p = ROOT.joinpath(*module.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    """Every ``import``/``from`` of a ct3dzoo module in every ct3dzoo module, including
    imports inside functions."""
    graph: dict[str, set[str]] = {}
    for path in PKG.rglob("*.py"):
        name = _module_name(path)
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                deps.update(_resolve(name, path.name == "__init__.py", node))
        graph[name] = {d for d in deps if d.startswith("ct3dzoo") and d != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return [*stack[stack.index(m) :], m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def _floor(module: str) -> int | None:
    for i, names in enumerate(FLOORS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    return None


def test_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 30
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_cycle_detector_can_fail():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_modules_import_only_downwards():
    bad = []
    for module, deps in import_graph().items():
        if module == "ct3dzoo":
            continue
        mine = _floor(module)
        assert mine is not None, f"{module} is on no floor of FLOORS (add it)"
        for d in deps:
            theirs = _floor(d)
            if theirs is not None and theirs > mine:
                bad.append(f"{module} (floor {mine}) imports {d} (floor {theirs})")
    assert not bad, "\n".join(bad)


def test_import_ct3dzoo_is_light_and_silent():
    code = (
        "import sys, warnings; warnings.simplefilter('error'); import ct3dzoo, ct3dzoo.cli; "
        "print(sorted(m for m in ('torch', 'torchvision', 'pytorchvideo') if m in sys.modules))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]" and res.stderr == ""


def test_loading_the_families_warns_nothing():
    code = "import warnings; warnings.simplefilter('error'); import ct3dzoo; ct3dzoo.list_models()"
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert res.returncode == 0 and res.stderr == "", res.stderr


def test_catalog_is_current():
    """``catalog.json`` (what the CLI reads without torch) equals the live registry."""
    from ct3dzoo._catalog_build import CATALOG_PATH, build

    assert json.loads(CATALOG_PATH.read_text()) == json.loads(build()), (
        "ct3dzoo/catalog.json is stale: run `python -m ct3dzoo._catalog_build`"
    )


def test_public_errors_importable():
    from ct3dzoo.errors import DicomSeriesError, WeightsUnavailableError

    assert issubclass(WeightsUnavailableError, RuntimeError)
    assert issubclass(DicomSeriesError, ValueError)


@pytest.mark.parametrize("folder", ["examples", "docs", "benchmarks"])
def test_users_import_only_public_names(folder):
    private = re.compile(r"^\s*(from|import)\s+ct3dzoo(\.\w+)*\._\w+", re.M)
    offenders = []
    for path in (ROOT / folder).rglob("*"):
        if path.suffix in (".py", ".md") and private.search(path.read_text()):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_no_module_over_400_lines():
    long = [
        f"{p.relative_to(ROOT)} ({n})"
        for p in PKG.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    ]
    assert long == []


def test_help_does_not_import_torch():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = (
        "import sys; from ct3dzoo.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "main(['list', 'x3d*'])\n"
        "print('torch' in sys.modules)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert res.returncode == 0, res.stderr
    assert "finetune" in res.stdout and "x3d_xs" in res.stdout
    assert res.stdout.strip().endswith("False")


def test_weights_rows_need_licence_citation_and_contract():
    import dataclasses

    import ct3dzoo
    from ct3dzoo._specs import InputContract, WeightsSpec

    for name in ct3dzoo.list_pretrained():
        spec = ct3dzoo.get_pretrained_cfg(name)
        assert isinstance(spec.input_contract, InputContract), name
        assert spec.license and spec.citation, name
    row = ct3dzoo.get_pretrained_cfg("r3d_18")
    with pytest.raises(ValueError, match="needs its licence and citation"):
        dataclasses.replace(row, license="")
    fields = {f.name: f for f in dataclasses.fields(WeightsSpec)}
    assert fields["input_contract"].default is dataclasses.MISSING  # no row without one
    with pytest.raises(TypeError):
        WeightsSpec(arch="a", tag="b", pretrain_source="video", file_format="x",
                    license="MIT", citation="c")  # fmt: skip


def test_cli_and_info_read_the_same_spec(capsys):
    import ct3dzoo
    from ct3dzoo.cli import main

    assert main(["info", "swin3d_t"]) == 0
    out = capsys.readouterr().out
    spec = ct3dzoo.get_pretrained_cfg("swin3d_t")
    assert f"input contract {spec.input_contract.describe()}" in " ".join(out.split())
    assert spec.url in out and spec.license in out
