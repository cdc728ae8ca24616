"""``ct3dzoo finetune`` over a CSV manifest: parser wiring, a run, errors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_common import make_model

from ct3dzoo.train import cli


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ct3dzoo")
    cli.add_finetune_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def _manifest(tmp_path: Path, name: str, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    rows = ["path,group,pe"]
    for i in range(n):
        hu = rng.normal(40, 30, size=(8, 32, 32)).astype(np.float32)
        label = (i // 2) % 2  # two windows per study, sharing its label
        if label:
            hu[3:5, 10:16, 10:16] += 600  # a bright (contrast-like) blob inside the PE window
        path = tmp_path / f"{name}{i}.npz"
        np.savez(path, hu=hu, spacing=np.array([2.0, 0.7, 0.7]))
        rows.append(f"{path.name},{name}{i // 2},{label}")
    csv = tmp_path / f"{name}.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def test_parser_defaults_and_func() -> None:
    args = _parser().parse_args(["finetune", "t.csv", "--model", "r3d_18", "--out", "o"])
    assert args.func is cli.run_finetune
    assert (args.epochs, args.lr, args.batch_size, args.precision) == (10, 1e-4, 2, "auto")
    assert args.windows == ["pe"] and args.freeze == "none" and args.channels_last is None
    args = _parser().parse_args(
        ["finetune", "t.csv", "--model", "a", "--out", "o", "--no-channels-last", "--resume",
         "--windows", "lung", "pe", "--shape", "32", "224", "224", "--freeze", "backbone"]
    )  # fmt: skip
    assert args.channels_last is False and args.resume and args.shape == [32, 224, 224]


def test_cli_finetunes_a_manifest(tmp_path: Path, monkeypatch, capsys) -> None:
    train, val = _manifest(tmp_path, "t", 16, 0), _manifest(tmp_path, "v", 8, 1)
    monkeypatch.setattr(cli, "_build_model", lambda args, num_classes: make_model(num_classes))
    out = tmp_path / "run"
    argv = ["finetune", str(train), "--val", str(val), "--model", "tiny", "--out", str(out),
            "--epochs", "2", "--lr", "1e-2", "--batch-size", "4", "--no-progress",
            "--checkpoint-every", "2"]  # fmt: skip
    args = _parser().parse_args(argv)
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs"] == 2 and summary["monitor"] == "val_study_auroc"
    assert summary["best_checkpoint"] == str(out / "best")
    assert (out / "log.jsonl").read_text().count("\n") == 2
    # --resume on a finished run trains nothing more and reports the same
    args = _parser().parse_args([*argv, "--resume"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out) == summary


def test_cli_reports_errors(tmp_path: Path, monkeypatch, capsys) -> None:
    train = _manifest(tmp_path, "t", 4, 0)
    monkeypatch.setattr(cli, "_build_model", lambda args, num_classes: make_model(3))
    args = _parser().parse_args(
        ["finetune", str(train), "--model", "tiny", "--out", str(tmp_path / "o"),
         "--task", "multilabel"]
    )  # fmt: skip
    assert args.func(args) == 1
    assert "num_classes=3" in capsys.readouterr().err
    args = _parser().parse_args(
        ["finetune", str(tmp_path / "missing.csv"), "--model", "x", "--out", str(tmp_path)]
    )
    assert args.func(args) == 1
    assert "missing.csv" in capsys.readouterr().err


def test_cli_with_a_zoo_model(tmp_path: Path, capsys) -> None:
    """End to end with a registered architecture (random init) at a tiny size."""
    pytest.importorskip("pytorchvideo")
    import ct3dzoo

    if "x3d_xs" not in ct3dzoo.list_models():
        pytest.skip("x3d_xs not registered")
    train, val = _manifest(tmp_path, "t", 4, 0), _manifest(tmp_path, "v", 4, 1)
    out = tmp_path / "x3d"
    args = _parser().parse_args(
        ["finetune", str(train), "--val", str(val), "--model", "x3d_xs", "--pretrain", "none",
         "--out", str(out), "--shape", "8", "32", "32", "--epochs", "1", "--batch-size", "2",
         "--freeze", "stem", "--no-progress"]
    )  # fmt: skip
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs"] == 1 and np.isfinite(summary["last"]["train_loss"])
    state = torch.load(out / "last" / "state.pt", weights_only=True)
    assert state["epoch"] == 1
    if (out / "final").exists():  # save_pretrained output
        assert any((out / "final").iterdir())


def test_flags_derive_from_finetune_config() -> None:
    """Every CLI-visible FinetuneConfig field is a flag with the config's default and help."""
    from dataclasses import MISSING, fields

    from ct3dzoo.train import FinetuneConfig

    parser = _parser()
    args = parser.parse_args(["finetune", "t.csv", "--model", "a", "--out", "o"])
    sub = parser._subparsers._group_actions[0].choices["finetune"]  # the finetune parser
    actions = {a.dest: a for a in sub._actions}
    for f in fields(FinetuneConfig):
        if not f.metadata["cli"]:
            assert f.name not in actions, f.name
            continue
        assert "--" + f.name.replace("_", "-") in actions[f.name].option_strings, f.name
        assert actions[f.name].help.startswith(f.metadata["help"]), f.name
        if f.default is not MISSING:
            assert getattr(args, f.name) == f.default, f.name
    assert args.out_dir == "o" and actions["out_dir"].required
    args = parser.parse_args(
        ["finetune", "t.csv", "--model", "a", "--out-dir", "o", "--accum", "3", "--workers", "2",
         "--no-progress", "--balanced", "--min-lr-ratio", "0.1", "--pos-weight", "2", "3",
         "--no-restore-best", "--task", "multilabel"]
    )  # fmt: skip
    assert (args.grad_accum_steps, args.num_workers, args.progress) == (3, 2, False)
    assert args.balanced_sampling and args.min_lr_ratio == 0.1 and args.pos_weight == [2.0, 3.0]
    assert args.restore_best is False and args.task == "multilabel"
    with pytest.raises(SystemExit):
        parser.parse_args(["finetune", "t.csv", "--model", "a", "--out", "o", "--freeze", "x"])


def test_docs_table_defaults_match_finetune_config() -> None:
    """docs/finetuning.md quotes defaults (`name=value` in its tables): they are the config's."""
    import ast
    import re
    from dataclasses import fields

    from ct3dzoo.train import FinetuneConfig

    defaults = {f.name: f.default for f in fields(FinetuneConfig)}
    text = (Path(__file__).resolve().parents[1] / "docs" / "finetuning.md").read_text()
    checked = 0
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        for name, value in re.findall(r"`(\w+)=([^`|]+)`", line):
            if name in defaults:
                assert ast.literal_eval(value) == defaults[name], (name, value)
                checked += 1
    assert checked >= 8


def test_cli_parser_imports_neither_the_loop_nor_torchmetrics() -> None:
    """``ct3dzoo finetune``'s parser needs only the config: building it stays cheap."""
    import subprocess
    import sys

    code = (
        "import sys, argparse, ct3dzoo.train.cli as c\n"
        "p = argparse.ArgumentParser(); c.add_finetune_parser(p.add_subparsers())\n"
        "print(sorted(m for m in ('torchmetrics', 'ct3dzoo.train.loop', 'ct3dzoo.train.api')"
        " if m in sys.modules))\n"
        "from ct3dzoo.train import finetune, FinetuneConfig, predict, load_checkpoint\n"
        "print(finetune.__module__, FinetuneConfig.__module__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == "ct3dzoo.train.api ct3dzoo.train.config"
