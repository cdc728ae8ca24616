"""HU windows, resampling and slice windows."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from ct3dzoo.data import (
    WINDOWS,
    CTVolume,
    apply_window,
    resample,
    slice_window_bounds,
    slice_windows,
    stack_windows,
)

HU = [-2000.0, -1000.0, -600.0, -100.0, 0.0, 150.0, 400.0, 900.0, 2000.0]


def test_presets() -> None:
    assert WINDOWS["lung"] == (-600, 1500)
    assert WINDOWS["mediastinal"] == (40, 400)
    assert WINDOWS["pe"] == (400, 1000)
    assert {"bone", "brain", "abdomen", "liver"} <= set(WINDOWS)


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        # pe: [-100, 900] HU
        ("pe", [0, 0, 0, 0, 0.1, 0.25, 0.5, 1, 1]),
        # lung: [-1350, 150] HU; -1000 -> 350/1500
        ("lung", [0, 350 / 1500, 0.5, 1250 / 1500, 1350 / 1500, 1, 1, 1, 1]),
        # mediastinal: [-160, 240] HU
        ("mediastinal", [0, 0, 0, 60 / 400, 0.4, 310 / 400, 1, 1, 1]),
        ((0, 200), [0, 0, 0, 0, 0.5, 1, 1, 1, 1]),
    ],
)
def test_apply_window_values_numpy_and_torch(window, expected) -> None:
    out_np = apply_window(np.array(HU, dtype=np.float32), window)
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32
    np.testing.assert_allclose(out_np, expected, atol=1e-6)
    out_t = apply_window(torch.tensor(HU), window)
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
    np.testing.assert_allclose(out_t.numpy(), expected, atol=1e-6)
    ints = apply_window(np.array(HU, dtype=np.int16), window)  # ints become float32
    assert ints.dtype == np.float32
    np.testing.assert_allclose(ints, expected, atol=1e-6)


def test_apply_window_errors_and_input_untouched() -> None:
    with pytest.raises(KeyError, match="presets"):
        apply_window(np.zeros(2), "lungs")
    with pytest.raises(ValueError, match="width"):
        apply_window(np.zeros(2), (0, 0))
    t = torch.tensor(HU)
    apply_window(t, "pe")
    assert t[0] == -2000  # not modified in place


def test_stack_windows_numpy_torch_and_dim() -> None:
    hu = np.array(HU, dtype=np.float32).reshape(1, 3, 3)
    out = stack_windows(hu, ["lung", "pe", (0, 200)])
    assert out.shape == (3, 1, 3, 3)
    np.testing.assert_allclose(out[1], apply_window(hu, "pe"))
    t = stack_windows(torch.from_numpy(hu), ["lung", "pe", (0, 200)])
    np.testing.assert_allclose(t.numpy(), out, atol=1e-6)
    one = stack_windows(torch.from_numpy(hu), (400, 1000))
    assert one.shape == (1, 1, 3, 3)
    b = stack_windows(torch.zeros(2, 4, 5, 5), ["lung", "pe"], dim=1)
    assert b.shape == (2, 2, 4, 5, 5)
    assert b[0, 0, 0, 0, 0].item() == pytest.approx(0.9)  # lung: (0 + 1350) / 1500


def test_resample_volume_keeps_extent() -> None:
    hu = np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8)
    vol = CTVolume(hu, spacing=(2.0, 1.0, 1.0), origin=(10.0, 20.0, 30.0))
    iso = resample(vol, spacing=1.0)
    assert iso.shape == (8, 6, 8)
    assert iso.spacing == pytest.approx((1.0, 1.0, 1.0))
    # first new voxel centre is half a new voxel from the old first edge: z 30 - 1 + 0.5
    assert iso.origin == pytest.approx((10.0, 20.0, 29.5))
    half = resample(vol, shape=(2, 3, 4), mode="area")
    assert half.spacing == pytest.approx((4.0, 2.0, 2.0))
    assert half.hu[0, 0, 0] == pytest.approx(hu[:2, :2, :2].mean())
    assert half.origin == pytest.approx((10.5, 20.5, 31.0))
    # linear data along z is reproduced exactly in the interior
    lin = CTVolume(np.broadcast_to(np.arange(4.0)[:, None, None], (4, 2, 2)), spacing=(2, 1, 1))
    up = resample(lin, spacing=(1, 1, 1))
    np.testing.assert_allclose(up.hu[1:-1, 0, 0], [0.25, 0.75, 1.25, 1.75, 2.25, 2.75])


def test_resample_arrays_and_tensors() -> None:
    x = torch.rand(2, 1, 4, 6, 8)
    assert resample(x, shape=(8, 12, 16)).shape == (2, 1, 8, 12, 16)
    a = np.random.default_rng(0).random((4, 6, 8)).astype(np.float32)
    out = resample(a, spacing=(1, 1, 1), src_spacing=(2, 1, 1))
    assert isinstance(out, np.ndarray) and out.shape == (8, 6, 8)
    with pytest.raises(ValueError, match="src_spacing"):
        resample(a, spacing=1.0)
    with pytest.raises(ValueError, match="exactly one"):
        resample(a)


def test_slice_window_bounds_paper_protocol() -> None:
    # D = 100, 32 slices every 24: starts 0, 24, 48 then tail
    assert slice_window_bounds(100, 32, 24) == [(0, 32), (24, 56), (48, 80), (68, 100)]
    assert slice_window_bounds(100, 32, 24, "pad") == [(0, 32), (24, 56), (48, 80), (72, 100)]
    assert slice_window_bounds(100, 32, 24, "drop") == [(0, 32), (24, 56), (48, 80)]
    assert slice_window_bounds(80, 32, 24) == [(0, 32), (24, 56), (48, 80)]  # exact fit
    assert slice_window_bounds(20, 32, 24) == [(0, 20)]
    assert slice_window_bounds(20, 32, 24, "drop") == []


def test_slice_windows_values_and_padding() -> None:
    x = torch.arange(40.0).view(1, 40, 1, 1).expand(1, 40, 2, 2)
    wins = list(slice_windows(x, 32, 24))
    assert [b for _, b in wins] == [(0, 32), (8, 40)]
    assert all(w.shape == (1, 32, 2, 2) for w, _ in wins)
    assert wins[1][0][0, 0, 0, 0] == 8 and wins[1][0][0, -1, 0, 0] == 39
    padded = list(slice_windows(x, 32, 24, last="pad", pad_value=-1000.0))
    w, (s, e) = padded[-1]
    assert (s, e) == (24, 40) and w.shape[1] == 32
    assert w[0, 15, 0, 0] == 39 and w[0, 16, 0, 0] == -1000
    small = list(slice_windows(np.zeros((5, 2, 2)), 8, 4, pad_value=0.5))
    assert len(small) == 1 and small[0][0].shape == (8, 2, 2) and small[0][0][-1, 0, 0] == 0.5


def test_import_needs_only_numpy_and_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, ct3dzoo.data, ct3dzoo.viz; "
        "print(sorted(m for m in ('pydicom', 'nibabel', 'matplotlib', 'monai', 'cv2') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("mode", ["nearest", "nearest-exact"])
@pytest.mark.parametrize("shape", [(3, 4, 5), (7, 2, 3), (12, 9, 8)])
def test_resample_nearest_origin_is_the_copied_voxel(mode: str, shape: tuple) -> None:
    # every voxel holds its own flat index, so each output voxel says which one was copied
    src_shape = (6, 8, 10)
    hu = np.arange(np.prod(src_shape), dtype=np.float32).reshape(src_shape)
    direction = np.array([[0.0, 0.6, 0.8], [0.0, 0.8, -0.6], [1.0, 0.0, 0.0]])
    vol = CTVolume(hu, spacing=(2.0, 0.5, 0.7), origin=(3.0, -4.0, 5.0), direction=direction)
    out = resample(vol, shape=shape, mode=mode)
    copied = np.unravel_index(int(out.hu[0, 0, 0]), src_shape)
    np.testing.assert_allclose(
        out.origin, vol.affine[:3, :3] @ np.asarray(copied) + vol.origin, atol=1e-9
    )


def test_resample_trilinear_origin_is_the_cell_centre() -> None:
    vol = CTVolume(np.zeros((4, 4, 4)), spacing=(1.0, 1.0, 1.0))
    out = resample(vol, shape=(2, 2, 2))
    assert out.origin == pytest.approx((0.5, 0.5, 0.5))  # mean of voxels 0 and 1


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"spacing": 0}, "spacing must be one positive number"),
        ({"spacing": (1.0, -1.0, 1.0)}, "spacing must be one positive number"),
        ({"spacing": (1.0, float("nan"), 1.0)}, "spacing must be one positive number"),
        ({"spacing": (1.0, 1.0)}, "three (z, y, x)"),
        ({"shape": (0, 4, 4)}, "shape must be three positive integers"),
        ({"shape": (-2, 4, 4)}, "shape must be three positive integers"),
        ({"shape": (2.5, 4, 4)}, "shape must be three positive integers"),
        ({"shape": (4, 4)}, "shape must be three positive integers"),
        ({"shape": (4, 4, 4), "mode": "cubic"}, "mode must be one of"),
        ({}, "exactly one of spacing= or shape="),
    ],
)
def test_resample_bad_arguments(kw: dict, words: str) -> None:
    vol = CTVolume(np.zeros((4, 4, 4)), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=re.escape(words)):
        resample(vol, **kw)
    with pytest.raises(ValueError, match="src_spacing must be one positive number"):
        resample(np.zeros((4, 4, 4)), spacing=1.0, src_spacing=(0.0, 1.0, 1.0))


def test_resample_carries_the_padding_mask() -> None:
    mask = np.zeros((4, 4, 4), bool)
    mask[:, 0, :] = True
    vol = CTVolume(np.zeros((4, 4, 4)), meta={"padding_mask": mask})
    out = resample(vol, shape=(2, 2, 2))
    np.testing.assert_array_equal(out.meta["padding_mask"][:, 0, :], True)
    np.testing.assert_array_equal(out.meta["padding_mask"][:, 1, :], False)
    assert vol.meta["padding_mask"].shape == (4, 4, 4)


def test_apply_window_on_numbers_and_0d() -> None:
    assert apply_window(400, "pe") == 0.5 and isinstance(apply_window(400, "pe"), float)
    assert apply_window(-2000.0, "pe") == 0.0
    s = apply_window(np.float32(900.0), "pe")
    assert isinstance(s, np.float32) and s == 1.0
    a = apply_window(np.array(400.0), "pe")
    assert isinstance(a, np.ndarray) and a.shape == () and a == 0.5
    t = apply_window(torch.tensor(400.0), "pe")
    assert t.shape == () and t.item() == 0.5
    np.testing.assert_allclose(apply_window([-100, 400, 2000], "pe"), [0.0, 0.5, 1.0])
