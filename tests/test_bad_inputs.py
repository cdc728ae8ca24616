"""Bad inputs to models and weights: each a clear error or warning that names the problem.

(Data and finetune bad inputs: tests/test_bad_inputs_data.py, tests/test_bad_inputs_train.py.)
"""

from __future__ import annotations

import gzip
import json
import warnings

import numpy as np
import pytest
import torch

import ct3dzoo
from ct3dzoo._io.cache import cache_paths
from ct3dzoo.errors import CheckpointMismatchError, NotACheckpointError, UnverifiedWeightsWarning

TV_HOST = "https://download.pytorch.org"
PV_HOST = "https://dl.fbaipublicfiles.com"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ct3dzoo.load("mc3_18", pretrain=None, num_classes=2).eval()


def _x(*shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------- model input
@pytest.mark.parametrize(
    ("poison", "words"),
    [
        (float("nan"), ["3 NaN", "0 infinite", "torch.nan_to_num"]),
        (float("inf"), ["0 NaN", "3 infinite"]),
        (float("-inf"), ["0 NaN", "3 infinite"]),
    ],
)
def test_non_finite_voxels_are_an_error_naming_the_count(model, poison, words):
    x = _x(1, 1, 4, 32, 32)
    x.view(-1)[[0, 17, 400]] = poison
    with pytest.raises(ValueError) as e:
        model(x)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_raw_hu_warns_once_per_model():
    m = ct3dzoo.load("mc3_18", pretrain=None, num_classes=1).eval()
    hu = _x(1, 1, 4, 32, 32) * 2000 - 1000
    with pytest.warns(UserWarning, match=r"looks like raw HU; window it first") as rec:
        m(hu)
    assert "apply_window" in str(rec[0].message) and "[-99" in str(rec[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(hu)  # once per model
        m(_x(1, 1, 4, 32, 32))  # windowed input never warns
    fresh = ct3dzoo.load("mc3_18", pretrain=None, num_classes=1).eval()
    with pytest.warns(UserWarning, match="raw HU"):
        fresh(hu)


def test_slightly_out_of_range_augmented_input_does_not_warn(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(_x(1, 1, 4, 32, 32) * 1.4 - 0.2)  # intensity augmentation overshoot


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_are_cast_to_the_model_dtype(model, dtype):
    x = _x(1, 1, 4, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out = model(x.to(dtype))
    assert out.dtype == torch.float32
    tol = 1e-6 if dtype == torch.float64 else 5e-2
    assert torch.allclose(out, ref, atol=tol, rtol=tol)


def test_value_checks_can_be_switched_off():
    m = ct3dzoo.load("mc3_18", pretrain=None, num_classes=1).eval()
    m.value_checks = False
    x = _x(1, 1, 4, 32, 32)
    x[0, 0, 0, 0, 0] = float("nan")
    assert torch.isnan(m(x)).all()  # nothing checked, NaN flows through


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"num_classes": 1.5}, TypeError, "num_classes must be an int, got 1.5"),
        ({"num_classes": True}, TypeError, "num_classes must be an int"),
        ({"num_classes": -1}, ValueError, "num_classes must be >= 0"),
        ({"in_chans": 0}, ValueError, "in_chans must be >= 1"),
        ({"drop_rate": 1.0}, ValueError, "drop_rate must be in [0, 1)"),
    ],
)
def test_bad_model_options(kwargs, exc, words):
    with pytest.raises(exc) as e:
        ct3dzoo.load("r3d_18", pretrain=None, **kwargs)
    assert words in str(e.value)


@pytest.mark.parametrize("arch", ct3dzoo.list_models())
def test_zero_sizes_rejected_on_every_arch(arch):
    with pytest.raises(ValueError, match=r"num_slices must be a positive int .*got 0"):
        ct3dzoo.load(arch, pretrain=None, num_slices=0)
    with pytest.raises(ValueError, match=r"image_size must be a positive int .*got 0"):
        ct3dzoo.create_model(arch, image_size=0)
    with pytest.raises(ValueError, match=r"image_size .*got \(64, 0\)"):
        ct3dzoo.create_model(arch, image_size=(64, 0))


# ------------------------------------------------------------------------------ weights
def test_fetch_from_a_file_of_another_arch_is_refused(tmp_path, patch_row):
    from torchvision.models import video as tvv

    patch_row("mc3_18.kinetics400", hash_prefix=None, url=TV_HOST + "/models/mc3_18.pth")
    other = tmp_path / "mc3_18.pth"
    torch.save(tvv.r3d_18().state_dict(), other)  # an R3D-18, not an MC3-18
    with pytest.warns(UnverifiedWeightsWarning), pytest.raises(CheckpointMismatchError) as e:
        ct3dzoo.fetch("mc3_18.kinetics400", from_file=other)
    msg = str(e.value)
    assert "is not a checkpoint of mc3_18.kinetics400; nothing was cached" in msg
    assert "shape mismatches" in msg and "layer" in msg
    assert not cache_paths("mc3_18.kinetics400").weights.exists()
    assert not cache_paths("mc3_18.kinetics400").record.exists()


@pytest.fixture
def mirror(http_server, monkeypatch):
    monkeypatch.setenv("CT3DZOO_MIRROR", http_server.base)
    return http_server


def test_unhashed_row_records_first_file_and_says_it_was_not_verified(mirror, pv_file, point_row):
    mirror.serve(pv_file.url_path, pv_file.body)
    point_row(pv_file, PV_HOST)
    with pytest.warns(UnverifiedWeightsWarning, match="not verified against a published hash"):
        ct3dzoo.load("x3d_xs", progress=False)
    rec = json.loads(cache_paths("x3d_xs.kinetics400").record.read_text())
    assert rec["upstream_sha256"] == pv_file.sha256 and rec["verified"] is False


def test_broken_record_beside_intact_weights_is_repaired(mirror, tv_file, point_row):
    http_server = mirror
    http_server.serve(tv_file.url_path, tv_file.body)
    point_row(tv_file, TV_HOST)
    ref = ct3dzoo.load("mc3_18", progress=False, num_classes=0).eval()
    paths = cache_paths("mc3_18.kinetics400")
    paths.record.write_text("{ not json")
    n = http_server.count()
    with pytest.warns(UserWarning, match="was rebuilt from the intact"):
        again = ct3dzoo.load("mc3_18", progress=False, num_classes=0).eval()
    assert http_server.count() == n  # not treated as "not cached"
    x = _x(1, 1, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(ref(x), again(x))
    rec = json.loads(paths.record.read_text())
    assert rec["repaired"] is True and rec["safetensors_sha256"]


def test_truncated_cached_weights_are_not_repaired(mirror, tv_file, point_row):
    http_server = mirror
    http_server.serve(tv_file.url_path, tv_file.body)
    point_row(tv_file, TV_HOST)
    ct3dzoo.fetch("mc3_18.kinetics400", progress=False)
    paths = cache_paths("mc3_18.kinetics400")
    paths.record.unlink()
    data = paths.weights.read_bytes()
    paths.weights.write_bytes(data[: len(data) // 2])
    ct3dzoo.fetch("mc3_18.kinetics400", progress=False)  # fetched again, not "repaired"
    assert http_server.count(tv_file.url_path) == 2
    assert json.loads(paths.record.read_text()).get("repaired") is None


@pytest.mark.parametrize(
    ("name", "body", "what"),
    [
        ("ct.nii.gz", gzip.compress(b"\x5c\x01\x00\x00" + bytes(400)), "gzip file"),
        ("ct.nii", b"\x5c\x01\x00\x00" + bytes(340) + b"n+1\x00" + bytes(8), "NIfTI-1 volume"),
        ("slice.dcm", bytes(128) + b"DICM" + bytes(64), "DICOM file"),
        ("notes.pth", b"hello, I am text", "neither a zip archive nor a pickle"),
    ],
)
def test_non_checkpoint_file_as_pretrain_says_so(tmp_path, name, body, what):
    path = tmp_path / name
    path.write_bytes(body)
    with pytest.raises(NotACheckpointError) as e:
        ct3dzoo.load("mc3_18", pretrain=str(path))
    msg = str(e.value)
    assert f"{path} is not a checkpoint: it looks like" in msg and what in msg
    assert "pickled" not in msg


def test_real_nifti_file_as_pretrain_says_so(tmp_path):
    nib = pytest.importorskip("nibabel")
    path = tmp_path / "study.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), path)
    with pytest.raises(NotACheckpointError, match="is not a checkpoint: it looks like a gzip"):
        ct3dzoo.load("mc3_18", pretrain=str(path))
