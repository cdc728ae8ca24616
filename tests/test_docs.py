"""Docs: the generated model table is current, covers every arch, and the site config is sound."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
import yaml

import ct3dzoo

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_model_table", DOCS / "gen_model_table.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    return _gen()


@pytest.fixture(scope="module")
def rows(gen: ModuleType) -> list[dict[str, str]]:
    return gen.model_rows()  # measures every arch on the meta device (~15 s)


def test_model_table_is_current(gen: ModuleType, rows: list[dict[str, str]]) -> None:
    table = gen.render_table(rows)
    files = gen.updated_files(table)
    assert DOCS / "model_table.md" in files and DOCS / "models.md" in files
    stale = [str(p) for p, (old, new) in files.items() if old != new]
    assert not stale, f"stale model table in {stale}: run python docs/gen_model_table.py"


def test_model_table_covers_every_arch(rows: list[dict[str, str]]) -> None:
    text = (DOCS / "model_table.md").read_text()
    for arch in ct3dzoo.list_models():
        assert f"| `{arch}` |" in text, f"{arch} missing from docs/model_table.md"
    assert [r["Architecture"] for r in rows] == [f"`{a}`" for a in ct3dzoo.list_models()]


def test_model_table_values(rows: list[dict[str, str]]) -> None:
    by_arch = {r["Architecture"].strip("`"): r for r in rows}
    r3d = by_arch["r3d_18"]
    # torchvision: 33,371,472 parameters with its 400-way fc (512 * 400 + 400); the 1-channel
    # stem keeps 1 of 3 kernels (64 x 3 x 147 -> 64 x 1 x 147) plus its 64 x 1 x 147 border
    # offset kernel. 40.7 GFLOPs at 3x16x112x112, a little less with one channel.
    assert r3d["Params (M)"] == f"{(33_371_472 - 205_200 - 64 * 3 * 147 + 2 * 64 * 147) / 1e6:.1f}"
    assert 37.5 < float(r3d["GFLOPs native"]) < 40.7
    assert r3d["Native clip (TxHxW)"] == "16x112x112"
    assert float(r3d["GFLOPs 1x32x224x224"]) == pytest.approx(
        8 * float(r3d["GFLOPs native"]), rel=0.01
    )
    assert "kinetics400" in r3d["Weights tags"] and r3d["Licence"] != "-"
    x3d = by_arch["x3d_xs"]
    assert float(x3d["Params (M)"]) < 4 and float(x3d["GFLOPs native"]) < 1.0


def test_check_mode_exit_status(
    gen: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stale = tmp_path / "model_table.md"
    stale.write_text(f"# t\n{gen.START}\n| old |\n{gen.END}\n")
    monkeypatch.setattr(gen, "TARGETS", (stale,))
    monkeypatch.setattr(gen, "model_rows", lambda: [{"Architecture": "`a`", "Params (M)": "1.0"}])
    assert gen.main(["--check"]) == 1
    assert "| old |" in stale.read_text()  # --check never writes
    assert gen.main([]) == 0
    assert "| `a` | 1.0 |" in stale.read_text()
    assert gen.main(["--check"]) == 0


def test_mkdocs_nav_files_exist() -> None:
    cfg = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert cfg["docs_dir"] == "docs"

    def pages(nav: object) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        if isinstance(nav, list):
            return [p for item in nav for p in pages(item)]
        if isinstance(nav, dict):
            return [p for v in nav.values() for p in pages(v)]
        return []

    nav = pages(cfg["nav"])
    assert {"index.md", "installation.md", "quickstart.md", "concepts.md", "models.md"} <= set(nav)
    missing = [p for p in nav if not (DOCS / p).is_file()]
    assert not missing, f"mkdocs.yml nav names missing files: {missing}"


@pytest.mark.parametrize(
    "page", ["index.md", "installation.md", "quickstart.md", "concepts.md", "models.md"]
)
def test_relative_links_resolve(page: str) -> None:
    text = (DOCS / page).read_text()
    links = re.findall(r"\]\(([^)#\s]+\.(?:md|png))(?:#[^)]*)?\)", text)
    assert links or page == "installation.md"
    broken = [link for link in links if not (DOCS / link).exists()]
    assert not broken, f"{page}: broken links {broken}"


def test_index_cites_the_paper() -> None:
    text = (DOCS / "index.md").read_text()
    assert "Video Pretraining Advances 3D Deep Learning on Chest CT Tasks" in text
    assert "MIDL" in text and "2023" in text


API_PAGES = {
    "ct3dzoo": "api/ct3dzoo.md",
    "ct3dzoo.data": "api/data.md",
    "ct3dzoo.train": "api/train.md",
    "ct3dzoo.explain": "api/explain.md",
}


@pytest.mark.parametrize("module", sorted(API_PAGES))
def test_api_reference_pages_cover_the_public_names(module: str) -> None:
    """The mkdocstrings pages (built by `mkdocs build --strict` in .ci/run): in the nav, and
    naming every public name (lazily exported names need one `:::` directive each)."""
    import importlib

    page = API_PAGES[module]
    assert page in (ROOT / "mkdocs.yml").read_text(), f"{page} is not in the mkdocs nav"
    text = (DOCS / page).read_text()
    if f"::: {module}\n" in text and "members: false" not in text.split(f"::: {module}\n")[1][:80]:
        return  # the module's own members, rendered from its __all__
    mod = importlib.import_module(module)
    names = [n for n in mod.__all__ if not n.startswith("_") and n != "errors"]
    missing = [n for n in names if f"## `{module}.{n}`" not in text]
    assert not missing, f"{page} lacks {missing}: add a `:::` directive for each"
