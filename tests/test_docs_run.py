"""Docs that run (issue 21, point 6): every ```python block of README.md and docs/*.md.

Blocks are parsed with pytest-codeblocks (the `test` extra) and run here, one page at a
time in one namespace (a page reads top to bottom, later blocks use earlier names), in a
temporary folder holding what the prose says the reader has: a phantom study as a DICOM
folder and NIfTI files, ``train.csv``/``val.csv`` manifests, and (``SETUP``) the objects a
page names without building them. Offline (``CT3DZOO_OFFLINE=1``), CPU, tiny sizes.

A block that needs a download or minutes is skipped by name, with its reason, by an HTML
comment right before it (invisible on the site)::

    <!--pytest.mark.skip(reason="loads the Kinetics weights (a download)")-->

and a later block of the page that uses a name only a skipped block defines is skipped with
it (the test says which). A page new to docs/ is run without any change here.
"""

from __future__ import annotations

import csv
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytest_codeblocks = pytest.importorskip("pytest_codeblocks")

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = re.compile(r"""pytest\.mark\.skip\(reason=(["'])(.+)\1\)""")

#: what a page's prose hands the reader before its first block (names only, tiny sizes)
SETUP = {
    "index.md": "import torch\nvolume = torch.rand(1, 1, 16, 64, 64)",
    "models.md": "import ct3dzoo",
    "looking_inside.md": "import torch\nvolume = torch.rand(40, 64, 64)",
    "preprocessing.md": (
        "import torch, ct3dzoo\n"
        "tensor = torch.rand(1, 16, 48, 48)\n"
        "model = ct3dzoo.load('x3d_xs', pretrain=None, num_classes=1)"
    ),
    "finetuning.md": "import ct3dzoo",
}


def _blocks(page: Path) -> list[tuple[int, str, str | None]]:
    """``(line, code, skip reason or None)`` of each python block of ``page``."""
    out = []
    for b in pytest_codeblocks.extract_from_file(page):
        if b.syntax != "python":
            continue
        reasons = [m.group(2) for mark in b.marks if (m := SKIP.fullmatch(mark))]
        unnamed = [mark for mark in b.marks if not SKIP.fullmatch(mark)]
        assert not unnamed, f'{page.name}:{b.lineno}: skip with reason="...", got {unnamed}'
        out.append((b.lineno, b.code, reasons[0] if reasons else None))
    return out


RUN = [p for p in PAGES if _blocks(p)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the docs' examples open, built once from the phantom."""
    from ct3dzoo.phantom import make_phantom_dataset

    root = tmp_path_factory.mktemp("docs_run")
    manifest = make_phantom_dataset(root / "_data", n=4, seed=0, shape=(32, 48, 48))
    data = manifest.parent
    with open(data / "manifest_nifti.csv") as fh:
        rows = list(csv.DictReader(fh))
    dicom = sorted((data / "dicom").iterdir())[0]
    shutil.copytree(dicom, root / "study_dicom_folder")
    shutil.copytree(dicom, root / "study" / "series_dir")
    nii = data / rows[0]["path"]
    for name in ("scan.nii.gz", "ct.nii.gz"):
        shutil.copy(nii, root / name)
    from ct3dzoo.data import read_volume

    np.save(root / "scan.npy", read_volume(nii).hu)
    for name in ("train.csv", "val.csv"):
        with open(root / name, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["path", "label", "group"])
            w.writeheader()
            w.writerows({**r, "path": str(data / r["path"])} for r in rows)
    (root / "docs" / "img").mkdir(parents=True)
    return root


def _names(code: str) -> set[str]:
    return set(re.findall(r"\b[A-Za-z_]\w*\b", code))


def _defined(code: str) -> set[str]:
    import ast

    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
    return names


@pytest.mark.parametrize("page", RUN, ids=[p.name for p in RUN])
def test_page_blocks_run(
    page: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import torch

    monkeypatch.chdir(workdir)
    monkeypatch.setenv("CT3DZOO_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(workdir))  # "~/.cache/..." in an example stays in here
    torch.manual_seed(0)
    ns: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    exec(SETUP.get(page.name, ""), ns)
    missing: dict[str, str] = {}  # name -> why it is not there
    skipped, ran = [], 0
    for line, code, reason in _blocks(page):
        where = f"{page.name}:{line}"
        if reason is None and (_names(code) - _defined(code)) & set(missing):
            names = sorted((_names(code) - _defined(code)) & set(missing))
            reason = f"uses {', '.join(names)}: {missing[names[0]]}"
        if reason is not None:
            for name in _defined(code) - set(ns):
                missing[name] = f"from the skipped block {where}"
            skipped.append(f"{where} ({reason})")
            continue
        t0 = time.perf_counter()
        try:
            exec(compile(code, where, "exec"), ns)
        except Exception as e:
            raise AssertionError(f"{where} failed: {type(e).__name__}: {e}") from e
        for name in _defined(code):
            missing.pop(name, None)
        ran += 1
        assert time.perf_counter() - t0 < 30, f"{where} is too slow for the docs test"
    print(f"{page.name}: {ran} blocks ran; skipped: {skipped or 'none'}")
    assert ran or skipped


def test_skip_markers_name_their_reason() -> None:
    text = "\n".join(p.read_text() for p in PAGES)
    marks = re.findall(r"<!--\s*(pytest[.\w-]*[^>]*)-->", text)
    bad = [
        m for m in marks if m.strip().startswith("pytest.mark") and not SKIP.fullmatch(m.strip())
    ]
    assert not bad, f"skip markers without reason=: {bad}"
