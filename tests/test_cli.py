"""The ``ct3dzoo`` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import ct3dzoo
from ct3dzoo._io.cache import cache_paths
from ct3dzoo.cli import main

TV_HOST = "https://download.pytorch.org"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_list(capsys):
    rc, out, _ = _run(capsys, "list", "r*3*")
    assert rc == 0 and out.split() == ["r3d_18", "resnext101_32x8d_2d"]
    rc, out, _ = _run(capsys, "list")
    assert out.split() == ct3dzoo.list_models()
    rc, out, _ = _run(capsys, "list", "x3d_xs", "--pretrained")
    assert rc == 0 and out.split() == ["x3d_xs.kinetics400"]
    rc, out, _ = _run(capsys, "list", "swin3d_b*", "--pretrained")
    assert out.split() == ["swin3d_b.kinetics400", "swin3d_b.kinetics400_imagenet22k"]
    rc, _, err = _run(capsys, "list", "nothing*")
    assert rc == 1 and "no architectures match 'nothing*'" in err


def test_info(capsys):
    rc, out, _ = _run(capsys, "info", "r3d_18")
    assert rc == 0
    lines = dict(line.split(None, 1) for line in out.splitlines() if line and " " in line)
    assert lines["url"] == "https://download.pytorch.org/models/r3d_18-b3b3357e.pth"
    assert lines["hash_prefix"] == "b3b3357e"
    assert lines["input_size"] == "3, 16, 112, 112"
    assert lines["mean"] == "0.43216, 0.394666, 0.37645"
    assert "[r3d_18.kinetics400]" in out
    assert f"not cached (would be {cache_paths('r3d_18.kinetics400').weights})" in out
    rc, out, _ = _run(capsys, "info", "swin3d_b.kinetics400_imagenet22k")
    assert (
        "[swin3d_b.kinetics400_imagenet22k]" in out
        and "kinetics400, kinetics400_imagenet22k" in out
    )


def test_info_unknown_names_nearest(capsys):
    rc, out, err = _run(capsys, "info", "r3d_19")
    assert rc == 1 and out == ""
    assert "unknown architecture 'r3d_19'; nearest: r3d_18" in err


def test_fetch_from_file_and_info_shows_cached(capsys, tv_file, point_row):
    point_row(tv_file, TV_HOST)
    rc, out, err = _run(capsys, "fetch", "mc3_18.kinetics400", "--from", str(tv_file.path))
    path = cache_paths("mc3_18.kinetics400").weights
    assert rc == 0, err
    assert out.strip() == str(path) and path.is_file()
    rc, out, _ = _run(capsys, "info", "mc3_18")
    cached = [line.split(None, 1)[1] for line in out.splitlines() if line.startswith("cached ")]
    assert cached == [str(path)]


def test_fetch_bad_file_is_an_error(capsys, tv_file, point_row, tmp_path):
    point_row(tv_file, TV_HOST)
    bad = tmp_path / tv_file.filename
    bad.write_bytes(b"not a checkpoint")
    rc, out, err = _run(capsys, "fetch", "mc3_18.kinetics400", "--from", str(bad))
    assert rc == 1 and out == ""
    assert err.startswith("ct3dzoo fetch: error: ") and tv_file.sha256[:8] in err


def test_fetch_from_mirror(capsys, tv_file, point_row, http_server, monkeypatch):
    point_row(tv_file, TV_HOST)
    http_server.serve(tv_file.url_path, tv_file.body)
    monkeypatch.setenv("CT3DZOO_MIRROR", http_server.base)
    rc, out, err = _run(capsys, "fetch", "mc3_18", "--no-progress")
    assert rc == 0, err
    assert Path(out.strip()) == cache_paths("mc3_18.kinetics400").weights
    assert http_server.count(tv_file.url_path) == 1


def test_export_from_file_is_hub_ready(capsys, tv_file, point_row, tmp_path):
    point_row(tv_file, TV_HOST)
    out_dir = tmp_path / "mc3_18-ct"
    rc, out, err = _run(
        capsys,
        "export",
        "mc3_18.kinetics400",
        str(out_dir),
        "--from",
        str(tv_file.path),
        "--no-progress",
    )
    assert rc == 0, err
    assert "exported mc3_18.kinetics400 (in_chans=1, " in out and str(out_dir) in out
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    config = json.loads((out_dir / "config.json").read_text())
    assert config["model_config"]["num_classes"] == 0
    assert config["model_config"]["pretrain"] == "mc3_18.kinetics400"
    model = ct3dzoo.load(f"local-dir:{out_dir}").eval()
    ref = ct3dzoo.load("mc3_18", pretrain=str(tv_file.path), num_classes=0).eval()
    x = torch.rand(1, 1, 8, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


def test_export_in_chans_3(capsys, tv_file, point_row, tmp_path):
    point_row(tv_file, TV_HOST)
    rc, _, err = _run(
        capsys, "export", "mc3_18", str(tmp_path), "--in-chans", "3", "--from", str(tv_file.path)
    )
    assert rc == 0, err
    assert json.loads((tmp_path / "config.json").read_text())["model_config"]["in_chans"] == 3


def test_export_offline_uncached_explains(capsys, tv_file, point_row, tmp_path, monkeypatch):
    point_row(tv_file, TV_HOST)
    monkeypatch.setenv("CT3DZOO_OFFLINE", "1")
    rc, _, err = _run(capsys, "export", "mc3_18", str(tmp_path / "o"))
    assert rc == 1
    assert "ct3dzoo fetch mc3_18.kinetics400 --from" in err
    assert not (tmp_path / "o").exists()


def test_no_command_prints_help(capsys):
    rc, out, _ = _run(capsys)
    assert rc == 2 and "list" in out and "export" in out


def test_plugin_subcommands_are_wired(capsys, monkeypatch):
    seen = {}

    def add_finetune_parser(sub):
        p = sub.add_parser("finetune", help="fine-tune")
        p.add_argument("--epochs", type=int, default=1)
        return p

    def run_finetune(args):
        seen["epochs"] = args.epochs
        return 7

    fake = types.ModuleType("ct3dzoo.train.cli")
    fake.add_finetune_parser, fake.run_finetune = add_finetune_parser, run_finetune
    monkeypatch.setitem(sys.modules, "ct3dzoo.train.cli", fake)
    monkeypatch.setitem(sys.modules, "ct3dzoo.demo", None)  # "not installed"
    assert main(["finetune", "--epochs", "3"]) == 7 and seen == {"epochs": 3}
    with pytest.raises(SystemExit):
        main(["demo"])  # not registered: argparse usage error
    assert "invalid choice: 'demo'" in capsys.readouterr().err


def test_broken_plugin_reports_instead_of_breaking_the_cli(capsys, monkeypatch):
    fake = types.ModuleType("ct3dzoo.train.cli")  # lacks the two functions
    monkeypatch.setitem(sys.modules, "ct3dzoo.train.cli", fake)
    rc, _, err = _run(capsys, "finetune")
    assert rc == 1 and "ct3dzoo.train.cli could not be imported" in err
    rc, out, _ = _run(capsys, "list", "mc3*")
    assert rc == 0 and out.split() == ["mc3_18"]


def test_python_dash_m_entry_point():
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run(
        [sys.executable, "-m", "ct3dzoo", "list", "x3d*"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["x3d_l", "x3d_m", "x3d_s", "x3d_xs"]
    assert "torch.jit.script" not in res.stderr
