"""Shared fixtures for the finetune tests (a tiny model, a blob task) and unit tests of the
sampler, per-item seeding, metrics glue and checkpoint files."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.data import Dataset, DistributedSampler

import ct3dzoo
from ct3dzoo.train import aggregate_by_group, classification_metrics, load_checkpoint
from ct3dzoo.train.batches import (
    EpochSampler,
    IndexedDataset,
    balanced_weights,
    infer_task,
    make_targets,
)
from ct3dzoo.train.checkpoint import (
    STATE_NAME,
    WEIGHTS_NAME,
    find_checkpoint,
    get_rng_state,
    save_checkpoint,
    set_rng_state,
)
from ct3dzoo.train.inference import default_channels_last

SHAPE = (1, 8, 16, 16)


class TinyNet(nn.Module):
    """The model contract of ct3dzoo models, at toy size (no BatchNorm, so DDP is exact)."""

    def __init__(
        self, num_classes: int = 1, in_chans: int = 1, width: int = 8, drop: float = 0.0
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.pretrained_cfg: dict = {"arch": "tiny"}
        self.grad_checkpointing = False
        self.backbone = nn.Sequential(
            nn.Conv3d(in_chans, width, 3, padding=1),
            nn.GELU(),
            nn.Conv3d(width, width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.AdaptiveMaxPool3d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(drop), nn.Linear(width, num_classes))

    def stem_modules(self) -> list[nn.Module]:
        return [self.backbone[0]]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return self.head(checkpoint(self.backbone, x, use_reentrant=False))
        return self.head(self.backbone(x))


def make_model(num_classes: int = 1, seed: int = 0, drop: float = 0.0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(num_classes, drop=drop)


class BlobData(Dataset):
    """Noise volumes; label 1 when a bright blob is present. Items are CTDataset-style dicts.

    ``windows_per_study`` consecutive items share a group key and the study's label (the
    blob is in one of its windows). ``augment`` flips with the global torch RNG, ``sleep``
    slows loading (for the kill test), ``nan_at`` makes one item's image NaN.
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        windows_per_study: int = 1,
        augment: bool = False,
        sleep: float = 0.0,
        nan_at: int | None = None,
        tuples: bool = False,
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images, self.labels, self.groups = [], [], []
        for s in range(n // windows_per_study):
            y = int(torch.rand((), generator=g) < 0.5) if s >= 2 else s % 2
            hit = int(torch.randint(windows_per_study, (), generator=g))
            for w in range(windows_per_study):
                x = torch.rand(SHAPE, generator=g) * 0.5
                if y and w == hit:
                    z = int(torch.randint(1, 6, (), generator=g))
                    a, b = torch.randint(2, 12, (2,), generator=g).tolist()
                    x[0, z : z + 2, a : a + 3, b : b + 3] += 0.5
                self.images.append(x)
                self.labels.append(y if w == hit or windows_per_study == 1 else 0)
                self.groups.append(f"study{s}")
        self.study_labels = {}
        for gname, y in zip(self.groups, self.labels):
            self.study_labels[gname] = max(self.study_labels.get(gname, 0), y)
        self.augment, self.sleep, self.nan_at, self.tuples = augment, sleep, nan_at, tuples

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        if self.sleep:
            time.sleep(self.sleep)
        x = self.images[i]
        if self.augment and torch.rand(()) < 0.5:
            x = x.flip(-1)
        if self.nan_at == i:
            x = torch.full_like(x, math.nan)
        if self.tuples:
            return x, self.labels[i], self.groups[i]
        return {"image": x, "label": self.labels[i], "id": str(i), "group": self.groups[i]}


# ------------------------------------------------------------------------- unit tests
@pytest.mark.parametrize("epoch", [0, 3])
@pytest.mark.parametrize("n", [10, 11])
def test_epoch_sampler_matches_distributed_sampler(epoch: int, n: int) -> None:
    data = list(range(n))
    for rank in range(2):
        ref = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=7)
        ref.set_epoch(epoch)
        ours = EpochSampler(n, seed=7, num_replicas=2, rank=rank)
        ours.set_epoch(epoch)
        assert [i for _, i in ours] == list(ref)
        assert len(ours) == len(ref)
        ours.set_epoch(epoch, start=2)
        assert [i for _, i in ours] == list(ref)[2:]
        assert len(ours) == len(ref) - 2


def test_epoch_sampler_order_depends_on_seed_and_epoch() -> None:
    def order(seed: int, epoch: int) -> list[int]:
        s = EpochSampler(20, seed=seed)
        s.set_epoch(epoch)
        return [i for _, i in s]

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2)
    assert order(0, 1) != order(1, 1)
    assert sorted(order(0, 1)) == list(range(20))


def test_balanced_sampling_evens_out_classes() -> None:
    labels = [torch.tensor(1)] * 10 + [torch.tensor(0)] * 90
    w = balanced_weights(labels)
    assert w[0].item() == pytest.approx(0.1) and w[-1].item() == pytest.approx(1 / 90)
    s = EpochSampler(100, seed=0, weights=w)
    drawn = []
    for epoch in range(20):
        s.set_epoch(epoch)
        drawn += [i for _, i in s]
    frac_pos = sum(i < 10 for i in drawn) / len(drawn)
    assert 0.45 < frac_pos < 0.55


def test_indexed_dataset_seeds_items_by_seed_epoch_index() -> None:
    class Rand(Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int):
            return torch.rand(3), random.random()

    ds = IndexedDataset(Rand(), seed=5)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = ds[(1, 2)]
    assert torch.equal(torch.get_rng_state(), before)  # the global stream is untouched
    b = ds[(1, 2)]
    assert a[0] == 2 and torch.equal(a[1][0], b[1][0]) and a[1][1] == b[1][1]
    assert not torch.equal(ds[(2, 2)][1][0], a[1][0])  # another epoch
    assert not torch.equal(ds[(1, 3)][1][0], a[1][0])  # another item
    assert not torch.equal(IndexedDataset(Rand(), seed=6)[(1, 2)][1][0], a[1][0])


def test_classification_metrics_values() -> None:
    probs = torch.tensor([[0.1, 0.9], [0.4, 0.8], [0.35, 0.2], [0.8, 0.1]])
    targets = torch.tensor([[0, 1], [0, 1], [1, 0], [1, 1]])
    m = classification_metrics(probs, targets, label_names=["a", "b"], prefix="val_")
    # label a: pairs (pos, neg) ranked right 3 of 4 -> 0.75; AP = (1 + 2/3) / 2
    assert m["val_auroc/a"] == pytest.approx(0.75)
    assert m["val_auprc/a"] == pytest.approx((1 + 2 / 3) / 2)
    # label b: positives 0.9, 0.8, 0.1 vs negative 0.2 -> 2/3
    assert m["val_auroc/b"] == pytest.approx(2 / 3)
    assert m["val_auroc"] == pytest.approx((0.75 + 2 / 3) / 2)
    from torchmetrics.classification import MultilabelAUROC

    ref = MultilabelAUROC(num_labels=2, average="macro")(probs, targets)
    assert m["val_auroc"] == pytest.approx(float(ref))


def test_classification_metrics_single_class_label_is_nan_and_skipped() -> None:
    probs = torch.tensor([[0.1, 0.2], [0.9, 0.3]])
    targets = torch.tensor([[0, 1], [1, 1]])
    m = classification_metrics(probs, targets)
    assert math.isnan(m["auroc/1"])
    assert m["auroc"] == pytest.approx(1.0)


def test_aggregate_by_group_max_and_mean() -> None:
    probs = torch.tensor([[0.1], [0.7], [0.3], [0.2], [0.6]])
    names, mx = aggregate_by_group(probs, ["a", "a", "b", "c", "b"])
    assert names == ["a", "b", "c"]
    assert mx.flatten().tolist() == pytest.approx([0.7, 0.6, 0.2])
    _, mean = aggregate_by_group(probs, ["a", "a", "b", "c", "b"], reduction="mean")
    assert mean.flatten().tolist() == pytest.approx([0.4, 0.45, 0.2])


def test_task_inference_and_label_errors() -> None:
    assert infer_task(torch.tensor(1), 1) == "binary"
    assert infer_task(torch.tensor([1.0]), 1) == "binary"
    assert infer_task(torch.tensor(2), 3) == "multiclass"
    assert infer_task(torch.tensor([2.0]), 3) == "multiclass"  # class index from a CSV
    assert infer_task(torch.tensor([1.0, 0.0, 1.0]), 3) == "multilabel"
    with pytest.raises(ValueError, match=r"label shape \(3,\) does not match model.num_classes=2"):
        infer_task(torch.tensor([1.0, 0.0, 1.0]), 2)
    with pytest.raises(ValueError, match="num_classes=2"):
        infer_task(torch.tensor(0.5), 2)
    with pytest.raises(ValueError, match="num_classes=0"):
        infer_task(torch.tensor(1), 0)
    assert make_targets(torch.tensor([1, 0]), "binary", 1).tolist() == [[1.0], [0.0]]
    assert make_targets(torch.tensor([[2.0], [0.0]]), "multiclass", 3).tolist() == [2, 0]
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        make_targets(torch.tensor([3, 0]), "multiclass", 3)
    with pytest.raises(ValueError, match="num_classes=2"):
        make_targets(torch.ones(2, 3), "multilabel", 2)


def test_checkpoint_roundtrip_weights_only_and_crash_fallback(tmp_path: Path) -> None:
    model = make_model().to(memory_format=torch.channels_last_3d)
    torch.manual_seed(3)
    state = {"epoch": 2, "history": [{"a": 1.0}], "rng": get_rng_state()}
    expected_next = torch.rand(4)
    path = save_checkpoint(tmp_path / "last", model=model, state=state, metadata={"epoch": 2})
    assert sorted(p.name for p in path.iterdir()) == [WEIGHTS_NAME, STATE_NAME]
    assert not list(tmp_path.glob(".last.*"))  # temporaries cleaned up
    raw = torch.load(path / STATE_NAME, weights_only=True)  # plain tensors and containers
    assert raw["history"] == [{"a": 1.0}]

    other = make_model(seed=1)
    loaded = load_checkpoint(path, other)
    assert loaded["metadata"] == {"epoch": 2}
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(4), expected_next)

    # a crash between the two renames leaves only the parked copy: it is found
    path.rename(tmp_path / ".last.prev")
    assert find_checkpoint(tmp_path / "last") == tmp_path / ".last.prev"
    save_checkpoint(tmp_path / "last", model=other, state={"epoch": 3})
    assert find_checkpoint(tmp_path / "last") == tmp_path / "last"
    assert load_checkpoint(tmp_path / "last")["epoch"] == 3
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nothing")


def test_train_state_roundtrips_every_field_through_state_pt(tmp_path: Path) -> None:
    from dataclasses import fields

    from ct3dzoo.train.state import TrainState, checkpoint_state, restore_checkpoint_state

    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** (s + 1))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    opt.step()
    sched.step()
    st = TrainState(
        epoch=3, batch=2, global_step=14, loss_sum=1.5, loss_count=6.0, epoch_time=0.25,
        history=[{"epoch": 1.0, "val_auroc": 0.75}], best_metric=0.75, best_epoch=1,
        bad_epochs=2, done=False, stopped_early=False, monitor="val_loss",
        monitor_note="one class only",
    )  # fmt: skip
    assert {f.name for f in fields(TrainState)} <= set(vars(st))
    payload = checkpoint_state(
        st, task="binary", config={"lr": 0.1}, optimizer=opt, scheduler=sched, scaler=scaler
    )
    path = save_checkpoint(tmp_path / "last", model=model, state=payload)
    saved = torch.load(path / STATE_NAME, weights_only=True)
    opt2 = torch.optim.AdamW(make_model().parameters(), lr=0.1)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 0.5 ** (s + 1))
    back = restore_checkpoint_state(saved, optimizer=opt2, scheduler=sched2, scaler=scaler)
    assert back == st
    assert sched2.last_epoch == 1 and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    with pytest.raises(ValueError, match="not a finetune checkpoint"):
        restore_checkpoint_state({"x": 1}, optimizer=opt2, scheduler=sched2, scaler=scaler)


@pytest.mark.parametrize(
    ("arch", "on_cuda"),
    [("r3d_18", True), ("medicalnet_resnet10", True), ("x3d_xs", False), ("csn_r101", False)],
)
def test_channels_last_default_skips_grouped_3d_convs(arch: str, on_cuda: bool) -> None:
    """channels_last_3d made bf16 X3D/CSN steps ~20x slower on an H200 (docs/benchmarks.md):
    the default keeps them contiguous; plain 3D convnets get it on CUDA, nothing on CPU."""
    model = ct3dzoo.create_model(arch, num_classes=1)
    assert default_channels_last(model, torch.device("cuda")) is on_cuda
    assert default_channels_last(model, torch.device("cpu")) is False


def test_optimizer_is_fused_and_steps_like_the_plain_one() -> None:
    """finetune's AdamW uses torch's fused kernel (on CPU since torch 2.4): same groups,
    same update as the per-tensor implementation to float rounding."""
    from ct3dzoo.train.config import FinetuneConfig
    from ct3dzoo.train.optim import build_optimizer

    def net() -> nn.Module:  # no bias before the norm: its gradient is rounding noise
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv3d(1, 4, 3, bias=False), nn.BatchNorm3d(4), nn.Flatten(), nn.Linear(128, 1)
        )

    a, b = net(), net()
    cfg = FinetuneConfig(out_dir="unused", lr=1e-2, weight_decay=0.1)
    fused = build_optimizer(a, cfg)
    assert fused.defaults["fused"] is True
    by_id = {id(p): q for p, q in zip(a.parameters(), b.parameters())}
    plain = torch.optim.AdamW(
        [
            {"params": [by_id[id(p)] for p in g["params"]], "weight_decay": g["weight_decay"]}
            for g in fused.param_groups
        ],
        lr=1e-2,
        foreach=False,
    )
    assert [g["weight_decay"] for g in plain.param_groups] == [0.0, 0.1]
    x = torch.rand(3, 1, 4, 6, 6)
    for _ in range(3):
        for model, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    moved = 0.0
    for (name, p), q, p0 in zip(a.named_parameters(), b.parameters(), net().parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
        moved = max(moved, (p - p0).abs().max().item())
    assert moved > 1e-3  # the steps did move the weights
