"""benchmarks/train_throughput.py runs on any machine: without CUDA it prints a note, exit 0."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA the benchmark really runs")
def test_benchmark_prints_note_and_exits_0_on_cpu(capsys) -> None:
    spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "no CUDA GPU" in out
