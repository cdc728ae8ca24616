"""finetune()'s segmentation task: masks as labels, BCE + soft Dice, Dice over the val set,
and CTDataset(mask_column=) reading phantom lesion masks aligned with the volume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import ct3dzoo
from ct3dzoo.data import CTDataset
from ct3dzoo.phantom import make_chest_phantom, make_phantom_dataset
from ct3dzoo.train import finetune
from ct3dzoo.train.segmentation import DiceAccumulator, segmentation_loss

SIZE = (8, 32, 32)
RADIUS = (14.0, 18.0)  # mm: big enough to span voxels of a 48x48 phantom


def _blobs(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Bright spheres (radius 6) at random places in noise; every other item is empty."""
    g = torch.Generator().manual_seed(seed)
    d, h, w = torch.meshgrid(*(torch.arange(s, dtype=torch.float32) for s in SIZE), indexing="ij")
    items = []
    for i in range(n):
        c = torch.randint(8, 24, (2,), generator=g).float()
        mask = ((d - 4) ** 2 * 4 + (h - c[0]) ** 2 + (w - c[1]) ** 2 <= 36).float() * (i % 2)
        x = 0.3 + 0.1 * torch.rand(SIZE, generator=g) + 0.4 * mask
        items.append((x[None], mask[None]))
    return items


def test_dice_accumulator_equals_dice_of_the_whole_set():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 2, 4, 6, 6, generator=g)
    target = (torch.rand(5, 2, 4, 6, 6, generator=g) > 0.7).float()
    target[1] = 0
    logits[1] = -1  # an empty case predicted empty: per-case Dice 1
    acc = DiceAccumulator(2)
    for i in range(0, 5, 2):  # batches of 2, 2, 1
        acc.update(logits[i : i + 2], target[i : i + 2])
    pred = (logits > 0).float()
    inter = (pred * target).sum((0, 2, 3, 4))
    whole = 2 * inter / (pred.sum((0, 2, 3, 4)) + target.sum((0, 2, 3, 4)))
    out = acc.compute()
    assert out["dice"] == pytest.approx(float(whole.mean()), abs=1e-6)
    per_case = []
    for b in range(5):
        for c in range(2):
            p, t = pred[b, c], target[b, c]
            s = p.sum() + t.sum()
            per_case.append(1.0 if s == 0 else float(2 * (p * t).sum() / s))
    assert out["dice_case"] == pytest.approx(sum(per_case) / len(per_case), abs=1e-9)
    empty = DiceAccumulator(2)
    empty.update(torch.full_like(logits, -5.0), target)
    assert empty.compute()["dice"] == 0.0


def test_segmentation_loss_is_bce_plus_soft_dice():
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0]).reshape(1, 1, 1, 2, 2)
    target = torch.tensor([1.0, 0.0, 1.0, 0.0]).reshape(1, 1, 1, 2, 2)
    p = logits.sigmoid()
    bce = -(target * p.log() + (1 - target) * (1 - p).log()).mean()
    dice = (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    assert float(segmentation_loss(logits, target)) == pytest.approx(float(bce + 1 - dice), 1e-6)
    with pytest.raises(ValueError, match="head='segmentation'"):
        segmentation_loss(torch.zeros(1, 1), target)


def test_finetune_segmentation_learns_blobs_and_monitors_dice(tmp_path):
    torch.manual_seed(0)
    model = ct3dzoo.load(
        "resnet18_2d", pretrain=None, head="segmentation", num_classes=1,
        num_slices=SIZE[0], image_size=SIZE[1:],
    )  # fmt: skip
    train, val = _blobs(12, seed=1), _blobs(6, seed=2)
    val_masks = [(y, m[0]) for y, m in val]  # (D, H, W) masks work too
    res = finetune(
        model, train, val_masks, out_dir=tmp_path, epochs=6, lr=3e-3, batch_size=4,
        warmup_epochs=0, progress=False,
    )  # fmt: skip
    assert res.task == "segmentation" and res.monitor == "val_dice"
    h = res.history
    assert {"val_loss", "val_dice", "val_dice_case"} <= set(h[-1])
    assert all(math.isfinite(r["train_loss"]) for r in h)
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert res.best_metric == max(r["val_dice"] for r in h)
    assert res.best_metric > 0.3, h  # an empty prediction scores 0


def test_finetune_segmentation_bad_inputs(tmp_path):
    model = ct3dzoo.load(
        "resnet18_2d", pretrain=None, num_classes=1, num_slices=SIZE[0], image_size=SIZE[1:]
    )
    data = _blobs(2)
    with pytest.raises(ValueError, match="head='segmentation'"):
        finetune(model, data, out_dir=tmp_path, epochs=1, progress=False)
    seg = ct3dzoo.load(
        "resnet18_2d", pretrain=None, head="segmentation", num_classes=1,
        num_slices=SIZE[0], image_size=SIZE[1:],
    )  # fmt: skip
    with pytest.raises(ValueError, match="0 and 1 only"):
        finetune(seg, [(x, m * 2) for x, m in data], out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"\(2, D, H, W\)"):
        two = ct3dzoo.load(
            "resnet18_2d", pretrain=None, head="segmentation", num_classes=2,
            num_slices=SIZE[0], image_size=SIZE[1:],
        )  # fmt: skip
        finetune(two, data, out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="balanced_sampling"):
        finetune(seg, data, out_dir=tmp_path, balanced_sampling=True, progress=False)


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    pytest.importorskip("nibabel")
    out = tmp_path_factory.mktemp("seg_phantom")
    make_phantom_dataset(
        out, n=4, seed=3, shape=(16, 48, 48), formats=("nifti",), nodule_radius_mm=RADIUS
    )
    return out


def _rows(root):
    cases = json.loads((root / "cases.json").read_text())
    return cases, [
        {"path": root / "nifti" / f"{c['case']}.nii.gz", "mask": root / c["mask"],
         "label": c["label"], "group": c["group"]}
        for c in cases
    ]  # fmt: skip


def test_ctdataset_mask_column_aligns_masks_with_the_lesion(phantom_dir):
    cases, rows = _rows(phantom_dir)
    ds = CTDataset(rows, mask_column="mask", windows=None)
    assert ds.label_columns == ["label"]
    for i, c in enumerate(cases):
        item = ds[i]
        mask = item["label"]
        truth = make_chest_phantom(
            shape=c["shape"],
            seed=c["seed"],
            finding=bool(c["label"]),
            nodule_radius_mm=RADIUS,
        )
        assert mask.shape == (1, *c["shape"]) == item["image"].shape
        assert np.array_equal(mask[0].numpy().astype(np.uint8), truth.mask)
        assert int(mask.sum() > 0) == c["label"]
        if c["label"]:
            # the image read beside it is the phantom itself, and solid inside the mask
            assert np.allclose(item["image"][0].numpy(), truth.hu, atol=0.5)
            hu = item["image"][0][mask[0] > 0]
            assert float(hu.median()) > -300  # soft tissue, not lung (about -850 HU)
    half = CTDataset(rows, mask_column="mask", windows=None, shape=(8, 24, 24))
    pos = next(i for i, c in enumerate(cases) if c["label"])
    m = half[pos]["label"]
    assert m.shape == (1, 8, 24, 24) and set(m.unique().tolist()) <= {0.0, 1.0} and m.sum() > 0
    with pytest.raises(ValueError, match="transform"):
        CTDataset(rows, mask_column="mask", transform=lambda x: x)
