"""``ct3dzoo.data.transforms_for``: each row's input contract as a transform, checked on values."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ct3dzoo
from ct3dzoo.data import WINDOWS, CTVolume, apply_window, resample, transforms_for
from ct3dzoo.data.contract import reorientation

HU = torch.tensor([-3000.0, -1000.0, -100.0, 0.0, 400.0, 900.0, 1000.0, 2500.0]).reshape(2, 2, 2)


def test_window_rows_take_the_users_windows():
    t = transforms_for("r3d_18")
    assert WINDOWS["pe"] == (400.0, 1000.0)  # the paper's [-100, 900] HU
    out = t(HU)
    assert out.dtype == torch.float32 and out.shape == (1, 2, 2, 2)
    expect = (HU.clamp(-100, 900) + 100) / 1000
    torch.testing.assert_close(out[0], expect)
    two = transforms_for("r3d_18", windows=["lung", (40, 400)])(HU.numpy())
    assert two.shape == (2, 2, 2, 2)
    torch.testing.assert_close(two[0], apply_window(HU, "lung"))
    torch.testing.assert_close(two[1], ((HU + 160) / 400).clamp(0, 1))


def test_window_count_must_match_the_models_channels():
    model = ct3dzoo.create_model("r3d_18", in_chans=1)
    with pytest.raises(ValueError, match=r"in_chans=1 channel\(s\) but 2 window"):
        transforms_for(model, windows=["lung", "pe"])
    assert transforms_for(model).num_channels == 1


def test_hu_range_row_clips_and_scales():
    t = transforms_for("genesis_unet3d")
    out = t(HU[None, None])  # a batch (B, 1, D, H, W)
    assert out.shape == (1, 1, 2, 2, 2)
    expect = torch.tensor([0.0, 0.0, 0.45, 0.5, 0.7, 0.95, 1.0, 1.0]).reshape(2, 2, 2)
    torch.testing.assert_close(out[0, 0], expect)
    with pytest.raises(ValueError, match=r"fixed input mapping.*Drop windows="):
        transforms_for("genesis_unet3d", windows="pe")


def test_zscore_row_uses_the_volume_statistics():
    rng = np.random.default_rng(0)
    hu = rng.normal(-300, 400, size=(4, 8, 8)).astype(np.float32)
    z = transforms_for("medicalnet_resnet18")(hu)
    assert z.shape == (1, 4, 8, 8)
    expect = (hu.astype(np.float64) - hu.mean()) / hu.std()
    np.testing.assert_allclose(z[0].numpy(), expect, rtol=1e-5, atol=1e-5)
    # the upstream's own rule: statistics over voxels > 0 only, applied to every voxel
    z0 = transforms_for("medicalnet_resnet18", zscore_threshold=0)(hu)
    pos = hu[hu > 0].astype(np.float64)
    np.testing.assert_allclose(z0[0].numpy(), (hu - pos.mean()) / pos.std(), rtol=1e-5, atol=1e-5)
    batch = transforms_for("medicalnet_resnet18")(torch.from_numpy(np.stack([hu, 2 * hu]))[:, None])
    torch.testing.assert_close(batch[0], batch[1])  # per-volume statistics
    with pytest.raises(ValueError, match="constant"):
        transforms_for("medicalnet_resnet18")(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="z-score rows only"):
        transforms_for("r3d_18", zscore_threshold=0)


def test_model_spec_and_name_give_the_same_transform():
    model = ct3dzoo.create_model("medicalnet_resnet10")
    spec = ct3dzoo.get_pretrained_cfg("medicalnet_resnet10.23datasets")
    for obj in (model, spec, "medicalnet_resnet10", "medicalnet_resnet10.medicalnet"):
        assert transforms_for(obj).contract == spec.input_contract
    with pytest.raises(TypeError, match="WeightsSpec"):
        transforms_for(42)
    with pytest.raises(ValueError, match="in_chans=1"):
        transforms_for(ct3dzoo.create_model("genesis_unet3d", in_chans=2))


def test_stated_spacing_resamples_a_ctvolume():
    spec = ct3dzoo.get_pretrained_cfg("genesis_unet3d")
    spec = dataclasses.replace(
        spec, input_contract=dataclasses.replace(spec.input_contract, spacing=(2.0, 1.0, 1.0))
    )
    hu = np.linspace(-1000, 1000, 8 * 6 * 6, dtype=np.float32).reshape(8, 6, 6)
    vol = CTVolume(hu, spacing=(1.0, 1.0, 1.0))
    out = transforms_for(spec)(vol)
    assert out.shape == (1, 4, 6, 6)
    expect = (torch.from_numpy(resample(vol, spacing=(2, 1, 1)).hu) + 1000) / 2000
    torch.testing.assert_close(out[0], expect)
    # an array with spacing= is resampled the same way; without it, a warning says so
    torch.testing.assert_close(transforms_for(spec)(hu, spacing=(1, 1, 1)), out)
    with pytest.warns(UserWarning, match="without spacing="):
        assert transforms_for(spec)(hu).shape == (1, 8, 6, 6)


def test_stated_orientation_is_applied_exactly():
    spec = ct3dzoo.get_pretrained_cfg("genesis_unet3d")
    spec = dataclasses.replace(
        spec, input_contract=dataclasses.replace(spec.input_contract, orientation="SRA")
    )
    hu = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4) * 10 - 100
    out = transforms_for(spec)(hu)[0]
    lo, hi = spec.input_contract.hu_range
    # SPL -> SRA: D stays (S); H <- W flipped (L -> R); W <- H flipped (P -> A)
    expect = ((hu.flip(-2, -1).transpose(-2, -1)).clamp(lo, hi) - lo) / (hi - lo)
    torch.testing.assert_close(out, expect)
    assert out.shape == (2, 4, 3)
    assert reorientation("SPL", "SPL") == ((0, 1, 2), (False, False, False))
    assert reorientation("SPL", "RAS") == ((2, 1, 0), (True, True, False))
    with pytest.raises(ValueError, match="cannot reorient"):
        reorientation("SPL", "SSL")


def test_names_resolve_without_importing_the_models():
    """ct3dzoo.data sits below the model layer: a name is read from the catalog snapshot."""
    code = (
        "import sys; from ct3dzoo.data import transforms_for; "
        "t = transforms_for('genesis_unet3d'); "
        "assert 'ct3dzoo.models' not in sys.modules and 'ct3dzoo._model' not in sys.modules; "
        "print(t.contract.kind, t.contract.hu_range)"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "hu_range (-1000.0, 1000.0)"
