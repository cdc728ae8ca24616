"""`ct3dzoo demo`: end to end on phantoms at a tiny size, offline, with the plain fallback."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import ct3dzoo
from ct3dzoo import cli
from ct3dzoo.demo import DEFAULT_ARCH_KWARGS, DEFAULTS, demo

TINY: dict[str, Any] = {
    "arch": "x3d_xs",  # the smallest checkpoints; the default demo's settings are tested (slow) below
    "n_cases": 12,
    "n_val": 4,
    "epochs": 1,
    "shape": (8, 32, 32),
    "phantom_shape": (8, 43, 43),
    "batch_size": 4,
    "crop": 0.75,
    "progress": False,
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """One tiny demo run, offline: Kinetics weights requested but unavailable."""
    out = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CT3DZOO_OFFLINE", "1")
        mp.setenv("CT3DZOO_HOME", str(out / "home"))
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            summary = demo(out_dir=out / "run", pretrain="kinetics", seed=0, **TINY)
    return summary, buf.getvalue()


def test_demo_result_and_files(tiny_run: tuple[dict[str, Any], str]) -> None:
    s, printed = tiny_run
    out = Path(s["out_dir"])
    assert s["n_train"] == 8 and s["n_val"] == 4
    assert len(s["history"]) == 1 and s["history"][0]["epoch"] == 1
    assert 0.0 <= s["val_auroc"] <= 1.0 and math.isfinite(s["val_auroc"])
    assert s["val_auroc"] == s["history"][-1]["val_auroc"]
    # the phantom data set, written by the real writers and read back: training cases as
    # NIfTI, held-out validation cases (their own seed) as DICOM series, masks beside them
    train, val = out / "data" / "train", out / "data" / "val"
    assert len(list((train / "nifti").glob("*.nii.gz"))) == 8 and not (train / "dicom").exists()
    assert len(list((val / "dicom").iterdir())) == 4 and not (val / "nifti").exists()
    assert len(list((train / "masks").glob("*.nii.gz"))) == 8
    seeds = {c["seed"] for c in json.loads((train / "cases.json").read_text())}
    assert not seeds & {c["seed"] for c in json.loads((val / "cases.json").read_text())}
    assert Path(s["montage"]).stat().st_size > 1000
    assert json.loads((out / "summary.json").read_text())["val_auroc"] == s["val_auroc"]
    # everything under the one folder, named at the start and the end, with its size
    assert {p.name for p in out.iterdir()} == {
        "data",
        "run",
        "montage.png",
        "saliency.png",
        "summary.json",
    }
    # a Grad-CAM overlay of a positive held-out case, written as PNG
    assert Path(s["saliency"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path(s["saliency"]).stat().st_size > 1000
    assert Path(s["model_dir"]).parent == out / "run"
    assert s["bytes"] == sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    lines = printed.splitlines()
    assert str(out) in lines[1] and lines[-1].startswith(f"everything is in {out} (")


def test_demo_prints_a_line_per_epoch(tiny_run: tuple[dict[str, Any], str]) -> None:
    s, printed = tiny_run
    h = s["history"][0]
    line = next(x for x in printed.splitlines() if x.strip().startswith("1/1"))
    loss, val_loss, auroc, seconds = (float(v) for v in line.split()[1:])
    assert loss == round(h["train_loss"], 4) and auroc == round(h["val_auroc"], 3)
    assert val_loss == round(h["val_loss"], 4)
    assert 0 < seconds < s["runtime_s"]


def test_demo_falls_back_plainly_offline(tiny_run: tuple[dict[str, Any], str]) -> None:
    s, printed = tiny_run
    assert s["weights"] is None and s["pretrained"] is False
    assert "FALLING BACK TO RANDOM INITIALISATION" in printed
    assert "ct3dzoo fetch x3d_xs" in printed
    assert "validation AUROC" in printed and s["model_dir"] in printed


def test_demo_reports_its_auroc_with_the_interval(tiny_run: tuple[dict[str, Any], str]) -> None:
    s, printed = tiny_run
    low, high = s["val_auroc_ci"]
    assert (
        low == s["history"][-1]["val_auroc_ci"][0] and high == s["history"][-1]["val_auroc_ci"][1]
    )
    assert low <= s["val_auroc"] <= high
    n_val = s["n_val"]
    head = f"validation AUROC {s['val_auroc']:.3f} (95% CI {low:.3f}-{high:.3f}, bootstrap over "
    assert head + f"{n_val} held-out cases)" in printed


def test_demo_saved_model_reloads(tiny_run: tuple[dict[str, Any], str]) -> None:
    s, _ = tiny_run
    model = ct3dzoo.load(f"local-dir:{s['model_dir']}").eval()
    assert model.num_classes == 1 and model.in_chans == 1
    x = torch.rand(2, 1, *TINY["shape"])
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 1) and torch.isfinite(y).all()


def test_demo_model_predicts_its_own_validation(tiny_run, tmp_path: Path) -> None:
    """The issue's round trip: `ct3dzoo predict run/final data/val/manifest_dicom.csv`
    gives the demo's validation scores and AUROC (the model carries its preprocessing)."""
    s, _ = tiny_run
    final = Path(s["model_dir"])
    out = tmp_path / "p.csv"
    assert cli.main(["predict", str(final), str(s["val_manifest"]), "--out", str(out)]) == 0
    got = {r["group"]: float(r["score_label"]) for r in csv.DictReader(out.open())}
    want = {r["group"]: float(r["score_label"])
            for r in csv.DictReader((final / "validation_scores.csv").open())}  # fmt: skip
    assert got.keys() == want.keys() and max(abs(got[k] - want[k]) for k in want) <= 1e-5
    auroc = json.loads((tmp_path / "p.metrics.json").read_text())["auroc"]
    assert auroc == pytest.approx(s["val_auroc"], abs=1e-6)


def test_demo_is_deterministic(tiny_run: tuple[dict[str, Any], str], tmp_path: Path) -> None:
    s, _ = tiny_run
    again = demo(out_dir=tmp_path, pretrain=None, seed=0, verbose=False, **TINY)
    assert again["val_auroc"] == s["val_auroc"]
    assert again["history"][0]["train_loss"] == s["history"][0]["train_loss"]


def test_cli_demo_parses_and_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr("ct3dzoo.demo.demo", lambda **kw: seen.update(kw) or {})
    rc = cli.main(
        ["demo", "--out", "x", "--cases", "10", "--epochs", "2", "--shape", "8", "32", "32",
         "--no-pretrain", "--no-progress", "--seed", "3", "--head", "attention",
         "--drop-rate", "0.1"]
    )  # fmt: skip
    assert rc == 0
    assert seen["out_dir"] == "x" and seen["n_cases"] == 10 and seen["epochs"] == 2
    assert seen["shape"] == (8, 32, 32) and seen["pretrain"] is None and seen["seed"] == 3
    assert seen["progress"] is False
    assert seen["head"] == "attention" and seen["drop_rate"] == 0.1
    with pytest.warns(FutureWarning, match="--size is deprecated"):  # the old spelling
        assert cli.main(["demo", "--size", "4", "8", "8", "--window", "pe"]) == 0
    assert seen["shape"] == (4, 8, 8) and seen["windows"] == "pe"


def test_cli_demo_model_options_default_from_model_options() -> None:
    """The demo's --head/--drop-rate defaults are ModelOptions' (not restated)."""
    import argparse

    from ct3dzoo._specs import ModelOptions
    from ct3dzoo.demo import MODEL_OPTIONS, add_demo_parser

    parser = argparse.ArgumentParser()
    args = add_demo_parser(parser.add_subparsers()).parse_args([])
    assert MODEL_OPTIONS and all(
        getattr(args, name) == ModelOptions.default(name) for name in MODEL_OPTIONS
    )


def test_demo_rejects_too_few_cases(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="too few"):
        demo(out_dir=tmp_path, pretrain=None, verbose=False, **{**TINY, "n_cases": 2, "n_val": 2})


@pytest.mark.slow
def test_default_demo_learns(tmp_path: Path) -> None:
    """The default demo (random init, offline) finds the nodule on held-out cases, within
    issue #14's size budget (measured figures: docs/benchmarks.md, `benchmarks/demo.py`)."""
    s = demo(out_dir=tmp_path, pretrain=None, progress=False, verbose=False)
    assert s["val_auroc"] >= 0.9, s["history"]
    assert s["bytes"] <= 100e6


def test_demo_output_is_small_by_default(tiny_run: tuple[dict[str, Any], str]) -> None:
    """No disk cache, no resumable checkpoints unless asked: data, run/final, log, pictures."""
    s, _ = tiny_run
    out = Path(s["out_dir"])
    assert not (out / "cache").exists()
    assert sorted(p.name for p in (out / "run").iterdir()) == ["final", "log.jsonl"]


@pytest.mark.parametrize(
    ("arch", "alias"), [(DEFAULTS["arch"], "medicalnet"), ("resnet18_2d", "imagenet")]
)
def test_arch_without_kinetics_tries_its_own_weights_then_falls_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, arch: str, alias: str
) -> None:
    """An arch without Kinetics weights (the default MedicalNet ResNet-10, the 2D ResNet)
    tries its own pretrained weights, then says plainly that it starts from random ones."""
    from ct3dzoo._demo_model import load_demo_model

    monkeypatch.setenv("CT3DZOO_OFFLINE", "1")
    monkeypatch.setenv("CT3DZOO_HOME", str(tmp_path / "home"))
    said: list[str] = []
    model, weights = load_demo_model(arch, "kinetics", said.append, False, 0)
    assert weights is None and model.num_classes == 1
    text = "\n".join(said)
    assert "no Kinetics weights" in text and f"'{alias}'" in text
    assert "FALLING BACK TO RANDOM INITIALISATION" in text


def test_default_arch_kwargs_apply_to_the_default_arch_only(tmp_path: Path) -> None:
    tiny = {**TINY, "n_cases": 4, "n_val": 2, "epochs": 1, "verbose": False, "pretrain": None}
    s = demo(out_dir=tmp_path / "a", **{**tiny, "arch": DEFAULTS["arch"]})
    assert s["arch_kwargs"] == DEFAULT_ARCH_KWARGS == {"dilated": False}
    s = demo(out_dir=tmp_path / "b", **tiny)  # x3d_xs: no such option
    assert s["arch_kwargs"] == {}


def test_default_arch_alias_lookup_in_a_fresh_process(tmp_path: Path) -> None:
    """`ct3dzoo demo` starts without the model registry imported: the alias lookup fills it."""
    import os
    import subprocess
    import sys

    code = (
        "from ct3dzoo._demo_model import load_demo_model\n"
        "said = []\n"
        "m, w = load_demo_model('resnet18_2d', 'kinetics', said.append, False, 0)\n"
        "assert w is None and m.num_classes == 1, said\n"
        "print('\\n'.join(said))\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "CT3DZOO_OFFLINE": "1",
           "CT3DZOO_HOME": str(tmp_path / "home")}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "'imagenet'" in proc.stdout


def test_demo_takes_every_model_reference(tiny_run, tmp_path: Path, monkeypatch) -> None:
    """--arch NAME.TAG loads those weights; a saved folder / local-dir: starts from the saved
    weights (a 3-output model gets the demo's one output); bad ones are refused before any
    phantom is written."""
    from ct3dzoo._demo_model import load_demo_model

    monkeypatch.setenv("CT3DZOO_OFFLINE", "1")
    monkeypatch.setenv("CT3DZOO_HOME", str(tmp_path / "home"))
    s, _ = tiny_run
    saved = ct3dzoo.load(s["model_dir"])
    for ref in (s["model_dir"], f"local-dir:{s['model_dir']}"):
        said: list[str] = []
        model, weights = load_demo_model(ref, "kinetics", said.append, False, 0)
        assert weights == ref and "its own weights" in said[0]
        for k, v in saved.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), k
    three = ct3dzoo.load("x3d_xs", pretrain=None, num_classes=3)
    three.save_pretrained(tmp_path / "three")
    model, _ = load_demo_model(str(tmp_path / "three"), "kinetics", said.append, False, 0)
    assert model.num_classes == 1 and "head reset to 1 output" in said[-1]
    # NAME.TAG: those weights (not cached, offline: said plainly, then random weights)
    said = []
    model, weights = load_demo_model("r3d_18.kinetics400", "kinetics", said.append, False, 0)
    assert weights is None and "'kinetics400' weights of r3d_18" in said[0]
    for ref, pretrain, match in (
        ("r3d_18.kinetics400", None, "--no-pretrain asks for none"),
        ("r3d_19", "kinetics", "unknown architecture 'r3d_19'; nearest: r3d_18"),
        (str(tmp_path), "kinetics", "is a folder without config.json"),
        (str(tmp_path / "nope" / "final"), "kinetics", "model folder .* does not exist"),
    ):
        out = tmp_path / "refused"
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            demo(out_dir=out, **{**TINY, "arch": ref}, pretrain=pretrain, verbose=False)
        assert not out.exists()  # refused before anything was written
