"""finetune() / predict() on CPU with a tiny model: learning, options, checkpoints, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from test_train_common import SHAPE, BlobData, make_model
from torchmetrics.functional.classification import binary_auroc

from ct3dzoo.train import finetune, load_checkpoint, predict
from ct3dzoo.train.loop import TIMING_KEYS
from ct3dzoo.train.optim import param_groups

FAST = dict(progress=False, warmup_epochs=0.5)


def metrics_only(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("blob")
    model = make_model()
    train = BlobData(96, seed=0, windows_per_study=2, augment=True)
    val = BlobData(48, seed=1, windows_per_study=2)
    result = finetune(model, train, val, epochs=4, lr=1e-2, batch_size=8, out_dir=out, **FAST)
    return model, result, out


def test_learns_blob_task(trained) -> None:
    model, result, out = trained
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert result.monitor == "val_study_auroc"  # groups present -> study level (max)
    assert result.best_metric > 0.9
    assert result.history[-1]["val_auroc"] > 0.9
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.best_epoch == 1 + max(
        range(4), key=lambda e: (result.history[e]["val_study_auroc"], -e)
    )
    # the log holds one JSON line per epoch, equal to the history
    lines = (out / "log.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == result.history
    # fresh held-out data: predict() gives probabilities that rank the blobs
    test = BlobData(40, seed=2)
    probs = predict(model, test, batch_size=16)
    assert probs.shape == (40, 1) and probs.min() >= 0 and probs.max() <= 1
    assert binary_auroc(probs[:, 0], torch.tensor(test.labels)) > 0.9


def test_checkpoint_files(trained) -> None:
    model, result, out = trained
    assert result.best_checkpoint == out / "best"
    assert result.last_checkpoint == out / "last"
    state = torch.load(out / "last" / "state.pt", weights_only=True)
    assert state["epoch"] == 4 and state["batch"] == 0 and state["done"] is True
    assert set(state) >= {"optimizer", "scheduler", "scaler", "rng", "history"}
    assert isinstance(state["rng"]["torch"], torch.Tensor)
    # restore_best: the returned model carries the best weights
    best = load_file(out / "best" / "model.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(v, best[k]), k
    meta = load_checkpoint(out / "best")["metadata"]
    assert meta["epoch"] == result.best_epoch and meta["metric"] == result.best_metric


def test_resume_of_finished_run_trains_no_more(trained) -> None:
    _, result, out = trained
    again = finetune(
        make_model(seed=5),
        BlobData(96, seed=0, windows_per_study=2, augment=True),
        BlobData(48, seed=1, windows_per_study=2),
        epochs=4, lr=1e-2, batch_size=8, out_dir=out, resume=True, **FAST,
    )  # fmt: skip
    assert again.resumed_from == {"epoch": 4, "batch": 0}
    assert again.history == result.history and again.best_epoch == result.best_epoch


def test_resume_with_more_epochs_trains_on_along_the_rebuilt_schedule(tmp_path: Path) -> None:
    data, val = BlobData(16, seed=0), BlobData(8, seed=1)
    kw = dict(lr=1e-2, batch_size=4, weight_decay=0.0, warmup_epochs=0.5, progress=False)
    short = finetune(make_model(), data, val, epochs=2, out_dir=tmp_path / "run", **kw)
    w_short = load_file(tmp_path / "run" / "last" / "model.safetensors")
    longer = finetune(
        make_model(seed=5), data, val, epochs=4, out_dir=tmp_path / "run", resume=True, **kw
    )
    assert longer.resumed_from == {"epoch": 2, "batch": 0}
    assert longer.history[:2] == short.history  # epochs 1..2 are the original run's
    assert [(h["epoch"], h["step"]) for h in longer.history] == [(1, 4), (2, 8), (3, 12), (4, 16)]
    # the cosine schedule is rebuilt for 4 epochs (16 steps, 2 warm-up) and continues from
    # step 8: the rate a run planned for 4 epochs has there, not the finished run's 0
    assert short.history[1]["lr"] == pytest.approx(0.0, abs=1e-12)
    expected = 1e-2 * 0.5 * (1 + math.cos(math.pi * (12 - 2) / (16 - 2)))
    assert longer.history[2]["lr"] == pytest.approx(expected)
    assert longer.history[3]["lr"] == pytest.approx(0.0, abs=1e-12)
    planned = finetune(make_model(), data, val, epochs=4, out_dir=tmp_path / "planned", **kw)
    assert [h["lr"] for h in longer.history[2:]] == pytest.approx(
        [h["lr"] for h in planned.history[2:]]
    )
    w_long = load_file(tmp_path / "run" / "last" / "model.safetensors")
    assert any(not torch.equal(w_short[k], w_long[k]) for k in w_short)  # it trained
    state = torch.load(tmp_path / "run" / "last" / "state.pt", weights_only=True)
    assert state["epoch"] == 4 and state["done"] is True and state["config"]["epochs"] == 4
    assert math.isfinite(longer.history[3]["train_loss"])


def test_predict_study_aggregation_is_max_over_windows(trained) -> None:
    model, _, _ = trained
    data = BlobData(12, seed=3, windows_per_study=3)
    probs = predict(model, data, batch_size=5)
    studies = predict(model, data, batch_size=5, aggregate="max")
    assert list(studies) == [f"study{i}" for i in range(4)]
    for i, (name, p) in enumerate(studies.items()):
        assert torch.equal(p, probs[3 * i : 3 * i + 3].max(0).values), name
    with pytest.raises(ValueError, match="task="):
        predict(make_model(num_classes=3), data, batch_size=4)


def test_grad_accumulation_matches_larger_batch(tmp_path: Path) -> None:
    data = BlobData(32, seed=0)
    runs = []
    for bs, accum in ((8, 1), (4, 2), (2, 4)):
        m = make_model()
        r = finetune(
            m, data, epochs=2, lr=1e-2, batch_size=bs, grad_accum_steps=accum,
            out_dir=tmp_path / str(bs), **FAST,
        )  # fmt: skip
        runs.append((m, r))
    (m0, r0), *others = runs
    for m, r in others:
        assert [h["step"] for h in r.history] == [4, 8]
        for a, b in zip(r0.history, r.history):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        for a, b in zip(m0.parameters(), m.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_freeze_modes_and_backbone_lr_scale(tmp_path: Path) -> None:
    data = BlobData(16, seed=0)

    def run(**kw) -> tuple[dict, dict]:
        m = make_model()
        before = {k: v.clone() for k, v in m.state_dict().items()}
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        finetune(m, data, epochs=1, lr=1e-2, batch_size=8, out_dir=out, **FAST, **kw)
        changed = {k: not torch.equal(before[k], v) for k, v in m.state_dict().items()}
        return changed, before

    changed, _ = run(freeze="backbone")
    assert changed["head.1.weight"] and changed["head.1.bias"]
    assert not any(v for k, v in changed.items() if k.startswith("backbone."))
    changed, _ = run(freeze="stem")
    assert not changed["backbone.0.weight"] and not changed["backbone.0.bias"]
    assert changed["backbone.2.weight"] and changed["head.1.weight"]
    changed, _ = run(backbone_lr_scale=0.0)
    assert changed["head.1.weight"]
    assert not any(v for k, v in changed.items() if k.startswith("backbone."))
    changed, _ = run()
    assert all(changed.values())

    groups = param_groups(make_model(), lr=1.0, backbone_lr_scale=0.1, weight_decay=0.05)
    by = {(g["lr"], g["weight_decay"]): sum(p.numel() for p in g["params"]) for g in groups}
    assert by == {(0.1, 0.0): 16, (0.1, 0.05): 8 * 27 + 8 * 8 * 27, (1.0, 0.0): 1, (1.0, 0.05): 8}


def test_loss_with_pos_weight_and_lr_schedule(tmp_path: Path) -> None:
    data = BlobData(16, seed=0)
    model = make_model()
    x = torch.stack(data.images)
    y = torch.tensor(data.labels, dtype=torch.float32)[:, None]
    with torch.no_grad():
        expected = F.binary_cross_entropy_with_logits(model(x), y, pos_weight=torch.tensor([3.0]))
    r = finetune(
        model, data, epochs=3, lr=0.0, batch_size=4, pos_weight=3.0, out_dir=tmp_path, **FAST
    )
    assert r.history[0]["train_loss"] == pytest.approx(float(expected), rel=1e-5)
    # cosine with warm-up, lr=1: warm-up over half an epoch (2 steps), then cosine to 0
    r = finetune(
        make_model(), data, epochs=2, lr=1.0, batch_size=4, out_dir=tmp_path / "s",
        warmup_epochs=0.5, weight_decay=0.0, progress=False,
    )  # fmt: skip
    assert r.history[0]["lr"] == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 6)))
    assert r.history[1]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_early_stopping_on_val_auroc(tmp_path: Path) -> None:
    r = finetune(
        make_model(), BlobData(16, seed=0), BlobData(16, seed=1), epochs=6, lr=0.0,
        batch_size=8, patience=2, out_dir=tmp_path, **FAST,
    )  # fmt: skip
    assert r.monitor == "val_study_auroc" and r.stopped_early  # one window per study
    assert len(r.history) == 3 and r.best_epoch == 1  # no improvement at lr=0
    assert r.history[0]["val_auroc"] == r.history[2]["val_auroc"]


@pytest.mark.parametrize(
    "num_classes, make_label, task",
    [
        (3, lambda y, i: i % 3, "multiclass"),
        (2, lambda y, i: torch.tensor([float(y), float(i % 2 == 0)]), "multilabel"),
    ],
)
def test_multiclass_and_multilabel(tmp_path: Path, num_classes, make_label, task) -> None:
    class Wrapped(BlobData):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            item["label"] = make_label(item["label"], i)
            return item

    r = finetune(
        make_model(num_classes), Wrapped(24, seed=0), Wrapped(12, seed=1), epochs=1, lr=1e-3,
        batch_size=6, out_dir=tmp_path, label_names=[f"c{j}" for j in range(num_classes)], **FAST,
    )  # fmt: skip
    assert r.task == task
    h = r.history[0]
    assert all(f"val_auroc/c{j}" in h and f"val_auprc/c{j}" in h for j in range(num_classes))
    assert math.isfinite(h["train_loss"]) and math.isfinite(h["val_auroc"])


def test_tuple_items_bf16_cpu_and_grad_checkpointing(tmp_path: Path) -> None:
    model = make_model()
    r = finetune(
        model, BlobData(16, seed=0, tuples=True), BlobData(8, seed=1, tuples=True), epochs=1,
        lr=1e-3, batch_size=8, precision="bf16", grad_checkpointing=True, channels_last=True,
        out_dir=tmp_path, **FAST,
    )  # fmt: skip
    assert model.grad_checkpointing is True
    assert math.isfinite(r.history[0]["train_loss"]) and "val_auroc" in r.history[0]


def test_error_empty_dataset(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="train_data is empty"):
        finetune(make_model(), [], epochs=1, lr=1e-3, batch_size=2, out_dir=tmp_path)
    with pytest.raises(ValueError, match="val_data is empty"):
        finetune(make_model(), BlobData(4), [], epochs=1, lr=1e-3, batch_size=2, out_dir=tmp_path)


def test_error_label_shape_mismatch(tmp_path: Path) -> None:
    data = [(torch.rand(SHAPE), torch.tensor([1.0, 0.0, 1.0])) for _ in range(4)]
    with pytest.raises(ValueError, match=r"label shape \(3,\).*num_classes=2"):
        finetune(make_model(2), data, epochs=1, lr=1e-3, batch_size=2, out_dir=tmp_path)


def test_error_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    class NanInEpoch2(BlobData):
        loads = 0

        def __getitem__(self, i):
            item = super().__getitem__(i)
            NanInEpoch2.loads += 1
            if i == 11 and NanInEpoch2.loads > len(self):
                item["image"] = torch.full_like(item["image"], math.nan)
            return item

    # where item 11 lands in epoch 2: the order is randperm seeded with seed + epoch
    order = torch.randperm(16, generator=torch.Generator().manual_seed(0 + 1)).tolist()
    step = 4 + order.index(11) // 4 + 1
    with pytest.raises(FloatingPointError, match=rf"epoch 2, optimiser step {step} ") as e:
        finetune(
            make_model(), NanInEpoch2(16, seed=0), epochs=3, lr=1e-3, batch_size=4,
            checkpoint_every_steps=1, out_dir=tmp_path, **FAST,
        )  # fmt: skip
    assert str(tmp_path / "last") in str(e.value)
    state = load_checkpoint(tmp_path / "last", make_model())
    assert state["global_step"] == step - 1
    w = load_file(tmp_path / "last" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in w.values())


def test_fp16_uses_grad_scaler_and_saves_its_state(tmp_path: Path) -> None:
    r = finetune(
        make_model(), BlobData(16, seed=0), epochs=1, lr=1e-3, batch_size=8, precision="fp16",
        max_grad_norm=1.0, out_dir=tmp_path, **FAST,
    )  # fmt: skip
    assert math.isfinite(r.history[0]["train_loss"])
    scaler = torch.load(tmp_path / "last" / "state.pt", weights_only=True)["scaler"]
    assert scaler["scale"] > 0 and scaler["_growth_tracker"] == 2  # two unskipped steps


def test_config_object_with_keyword_overrides(tmp_path: Path) -> None:
    from ct3dzoo.train import FinetuneConfig

    cfg = FinetuneConfig(out_dir=tmp_path / "a", epochs=1, lr=0.5, batch_size=8, progress=False)
    data = BlobData(16, seed=0)
    r = finetune(make_model(), data, config=cfg, warmup_epochs=0.0, min_lr_ratio=0.5)
    assert r.out_dir == tmp_path / "a" and len(r.history) == 1
    assert r.history[0]["lr"] == pytest.approx(0.5 * 0.5)  # the end of the cosine: lr * ratio
    assert cfg.warmup_epochs == 1.0  # the config object itself is unchanged (frozen)


def test_keep_checkpoints_false_writes_only_final_and_the_log(tmp_path: Path) -> None:
    kw = dict(epochs=2, lr=1e-2, batch_size=8, **FAST)
    torch.manual_seed(0)
    a = finetune(
        make_model(), BlobData(16, seed=0), BlobData(16, seed=1), out_dir=tmp_path / "a",
        restore_best=False, **kw,
    )  # fmt: skip
    torch.manual_seed(0)
    b = finetune(
        make_model(), BlobData(16, seed=0), BlobData(16, seed=1), out_dir=tmp_path / "b",
        restore_best=False, keep_checkpoints=False, **kw,
    )  # fmt: skip
    assert metrics_only(a.history) == metrics_only(b.history)  # same training
    assert (tmp_path / "a" / "last").is_dir() and (tmp_path / "a" / "best").is_dir()
    assert not (tmp_path / "b" / "last").exists() and not (tmp_path / "b" / "best").exists()
    assert (tmp_path / "b" / "log.jsonl").is_file()
    with pytest.raises(ValueError, match=r"keep_checkpoints=False .* restore_best=False"):
        finetune(make_model(), BlobData(4, seed=0), out_dir=tmp_path / "c", keep_checkpoints=False)
