"""viz.montage: writes a PNG whose pixels reflect the window; clear error without matplotlib."""

from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import pytest
import torch

from ct3dzoo.data import CTVolume, stack_windows
from ct3dzoo.viz import montage

pytest.importorskip("matplotlib")


def _png(path: Path) -> np.ndarray:
    import matplotlib.image as mpimg

    return mpimg.imread(path)


def test_montage_writes_png_with_windowed_values(tmp_path: Path) -> None:
    hu = np.full((10, 32, 32), -1000.0, np.float32)  # air ...
    hu[:, 8:24, 8:24] = 900.0  # ... with a bright (pe window top) square
    vol = CTVolume(hu, spacing=(2.0, 0.5, 0.5))
    fig = montage(vol, window="pe", path=tmp_path / "m.png", num_slices=4, title="t")
    assert len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes] == ["d=0", "d=3", "d=6", "d=9"]
    img = _png(tmp_path / "m.png")
    assert img.ndim == 3 and img.shape[0] > 50
    grey = img[..., :3].mean(-1)
    assert grey.min() < 0.05 and grey.max() > 0.95  # black air and white square both drawn


def test_montage_tensor_inputs(tmp_path: Path) -> None:
    x = torch.rand(1, 1, 6, 16, 16)
    fig = montage(x, window=None, path=None, num_slices=20)
    assert len(fig.axes) == 6  # capped at D
    rgb = stack_windows(torch.zeros(6, 16, 16), ["lung", "pe", "mediastinal"])
    fig = montage(rgb, window=None, path=tmp_path / "rgb.png", num_slices=2)
    img = _png(tmp_path / "rgb.png")
    assert img.shape[-1] in (3, 4)
    assert fig.axes[0].images[0].get_array().shape == (16, 16, 3)
    with pytest.raises(ValueError, match=r"\(D, H, W\)"):
        montage(np.zeros((4, 4)), window=None)


def test_montage_without_matplotlib_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match=r"ct3dzoo\[viz\]"):
        montage(np.zeros((2, 4, 4)))
