"""Every ``ct3dzoo`` subcommand against broken inputs: one line ``ct3dzoo CMD: error: ...``
naming the file or option, exit status 1, no traceback (``--debug`` keeps it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ct3dzoo
from ct3dzoo.cli import main
from ct3dzoo.data import CTVolume
from ct3dzoo.errors import CorruptCheckpointError

ROOT = Path(__file__).resolve().parents[1]
ARCH = "x3d_xs"  # the fastest arch to build (3 M parameters)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A saved 1-output model (``model/``), one study (``s1.npz``) and a manifest (``m.csv``)."""
    d = tmp_path_factory.mktemp("cli_bad")
    ct3dzoo.load(ARCH, pretrain=None, num_classes=1).save_pretrained(d / "model")
    hu = np.random.default_rng(0).uniform(-1000, 400, (8, 32, 32)).astype("float32")
    CTVolume(hu=hu, spacing=(2.0, 1.0, 1.0)).save_npz(str(d / "s1.npz"))
    (d / "m.csv").write_text("path,label\ns1.npz,1\n")
    return d


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _one_error_line(err: str, command: str) -> str:
    """The stderr of a refused command: exactly one line, ``ct3dzoo CMD: error: ...`` (besides
    ``ct3dzoo: warning: ...`` lines of deprecated spellings and tqdm bars)."""
    lines = [
        ln for ln in err.splitlines()
        if ln.strip() and "%|" not in ln and not ln.startswith("ct3dzoo: warning: ")
    ]  # fmt: skip
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"ct3dzoo {command}: error: "), lines[0]
    return lines[0]


def _broken_model(src: Path, dst: Path, what: str) -> Path:
    """A copy of the saved model folder with one thing broken."""
    dst.mkdir()
    cfg = (src / "config.json").read_text()
    weights = (src / "model.safetensors").read_bytes()
    if what == "truncated weights":
        (dst / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    elif what == "empty weights":
        (dst / "model.safetensors").write_bytes(b"")
    elif what != "no weights":
        (dst / "model.safetensors").write_bytes(weights)
    if what == "config not JSON":
        (dst / "config.json").write_text(cfg[: len(cfg) // 2])
    elif what == "config not a model config":
        (dst / "config.json").write_text(json.dumps({"hello": 1}))
    elif what != "no config":
        (dst / "config.json").write_text(cfg)
    return dst


BROKEN = [  # (what is broken, words the error line must hold)
    ("truncated weights", ["model.safetensors", "truncated or corrupt", "Re-save"]),
    ("empty weights", ["model.safetensors", "0 bytes", "truncated or corrupt"]),
    ("no weights", ["has no model.safetensors", "save_pretrained"]),
    ("no config", ["has no config.json", "save_pretrained"]),
    ("config not JSON", ["config.json", "is not valid JSON", "Re-save"]),
    ("config not a model config", ["config.json", "no 'model_config'"]),
]


@pytest.mark.parametrize(("what", "words"), BROKEN, ids=[b[0] for b in BROKEN])
@pytest.mark.parametrize("command", ["predict", "explain"])
def test_broken_saved_model_one_line_naming_the_file(capsys, work, tmp_path, what, words, command):
    model = _broken_model(work / "model", tmp_path / "broken", what)
    argv = [command, f"local-dir:{model}", str(work / "s1.npz"), "--out", str(tmp_path / "o")]
    rc, out, err = _run(capsys, *argv)
    line = _one_error_line(err, command)
    assert rc == 1 and out == ""
    assert all(w in line for w in words), line
    assert str(model) in line  # names the folder / file at fault
    assert not (tmp_path / "o").exists()  # nothing written


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["list", "zz*", "--pretrained"], ["no weights match 'zz*'"]),
        (["info", "r3d_19"], ["ct3dzoo info: error: unknown architecture 'r3d_19'", "r3d_18"]),
        (["fetch", "mc3_18.kinets"], ["ct3dzoo fetch: error:", "mc3_18.kinetics400"]),
        (["fetch", "mc3_18.kinetics400", "--from", "{d}/nope.pth"], ["nope.pth"]),
        (["export", "mc3_18.kinetics400", "{d}/s1.npz", "--from", "{d}/s1.npz"],
         ["ct3dzoo export: error: OUT_DIR", "is the input --from"]),
        (["finetune", "{d}/missing.csv", "--model", ARCH, "--out", "{d}/run"], ["missing.csv"]),
        (["finetune", "{d}/m.csv", "--model", "x3d_xz", "--pretrain", "none", "--out",
          "{d}/run"], ["--model x3d_xz: unknown architecture; nearest: x3d_xs"]),
        (["finetune", "{d}/m.csv", "--arch", "x3d_xz", "--out", "{d}/run"],  # the old spelling
         ["--model x3d_xz: unknown architecture; nearest: x3d_xs"]),
        (["demo", "--crop", "2", "--out", "{d}/demo"], ["ct3dzoo demo: error: crop", "(0, 1]"]),
        (["prepare", "{d}/missing.csv", "--out", "{d}/cache"], ["missing.csv"]),
        (["prepare", "{d}/m.csv", "--out", "{d}/cache", "--spacing", "1", "2"],
         ["ct3dzoo prepare: error: --spacing takes one number or three", "got 2"]),
        (["predict", "{d}/model", "{d}/m.csv", "--out", "{d}/m.csv"],
         ["ct3dzoo predict: error: --out", "m.csv is the input STUDY", "Choose another --out"]),
        (["predict", "{d}/nomodel", "{d}/s1.npz", "--out", "{d}/p.csv"],
         ["model folder", "nomodel does not exist", "save_pretrained", "architecture name"]),
        (["predict", "{d}/m.csv", "{d}/s1.npz", "--out", "{d}/p.csv"],
         ["m.csv is a file, not a model folder", "local-dir:PATH"]),
        (["predict", "x3d_xz", "{d}/s1.npz", "--out", "{d}/p.csv"],
         ["unknown architecture 'x3d_xz'; nearest: x3d_xs"]),
        (["explain", "local-dir:{d}/model", "{d}/missing.npz", "--out", "{d}/x"],
         ["missing.npz"]),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else None,
)  # fmt: skip
def test_each_subcommand_refuses_broken_input(capsys, work, argv, words):
    argv = [a.format(d=work) for a in argv]
    before = (work / "m.csv").read_bytes()
    rc, _, err = _run(capsys, *argv)
    line = err.strip() if argv[0] == "list" else _one_error_line(err, argv[0])
    assert rc == 1, err
    assert all(w in line for w in words), line
    assert (work / "m.csv").read_bytes() == before  # inputs untouched
    assert not any((work / n).exists() for n in ("run", "demo", "cache", "p.csv", "x"))


def test_finetune_model_is_required_and_the_old_arch_counts(capsys, work):
    """Usage errors (argparse, exit 2): no --model at all, or both --model and --arch."""
    for extra, words in (
        ([], "--model is required"),
        (["--model", ARCH, "--arch", ARCH], "--arch: not allowed with argument --model"),
    ):
        with pytest.raises(SystemExit) as e:
            main(["finetune", str(work / "m.csv"), "--out", str(work / "run"), *extra])
        assert e.value.code == 2 and words in capsys.readouterr().err
    assert not (work / "run").exists()


def test_predict_out_equal_to_manifest_is_refused_before_anything_runs(capsys, work):
    before = (work / "m.csv").read_bytes()
    link = work / "link.csv"
    link.symlink_to(work / "m.csv")
    try:
        for out in ("m.csv", "link.csv", "s1.npz"):
            rc, stdout, err = _run(
                capsys, "predict", str(work / "model"), str(work / "m.csv"), "--out",
                str(work / out),
            )  # fmt: skip
            assert rc == 1 and stdout == ""  # refused before the model was even loaded
            assert "would overwrite the file being read" in _one_error_line(err, "predict")
    finally:
        link.unlink()
    assert (work / "m.csv").read_bytes() == before


def test_predict_impossible_task_is_an_error_not_a_score_of_one(capsys, work, tmp_path):
    """Refused before any study is scored: no CSV at all (not a row with no score)."""
    out = tmp_path / "p.csv"
    rc, stdout, err = _run(
        capsys, "predict", str(work / "model"), str(work / "s1.npz"), "--out", str(out),
        "--task", "multiclass", "--num-slices", "4", "--stride", "4",
    )  # fmt: skip
    assert rc == 1 and stdout == ""
    line = _one_error_line(err, "predict")
    assert "a 1-output model cannot be multiclass; softmax of one logit is always 1" in line
    assert not out.exists()


def test_debug_keeps_the_traceback(work, tmp_path):
    model = _broken_model(work / "model", tmp_path / "broken", "truncated weights")
    argv = ["predict", f"local-dir:{model}", str(work / "s1.npz"), "--out", str(tmp_path / "o")]
    with pytest.raises(CorruptCheckpointError, match=r"model\.safetensors"):
        main(["--debug", *argv])
    with pytest.raises(CorruptCheckpointError):
        main([*argv, "--debug"])  # also after the command


def test_python_m_ct3dzoo_prints_one_line_without_traceback():
    """The real entry point (``info`` does not import torch, so this stays fast)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-m", "ct3dzoo", "info", "x3d_xz"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert res.returncode == 1 and res.stdout == ""
    line = _one_error_line(res.stderr, "info")
    assert "unknown architecture 'x3d_xz'; nearest: x3d_xs" in line


def test_python_m_ct3dzoo_deprecated_flag_warns_in_one_line(tmp_path):
    """An old spelling on the real command line: one ``ct3dzoo: warning:`` line (not Python's
    two-line FutureWarning too), then the error. Refused by the pre-checks: no torch import."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-m", "ct3dzoo", "predict", "r3d_18", str(tmp_path / "s.npz"),
         "--out", str(tmp_path / "p.csv"), "--size", "-1", "32"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.splitlines() == [
        "ct3dzoo: warning: --size is deprecated and will be removed in the next release; "
        "use --shape 0 H W",
        "ct3dzoo predict: error: --shape must be >= 0; got 0, -1, 32",
    ], res.stderr
