"""Bad finetune inputs: each gives a clear error (class + the words the message must hold) or
a warning that names the problem; never a silent wrong answer (issue 14, "Finetune")."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from test_train_common import BlobData, make_model

from ct3dzoo.errors import SingleClassValidationWarning
from ct3dzoo.train import FinetuneConfig, finetune

FAST = dict(progress=False, warmup_epochs=0.5, epochs=1, lr=1e-2, batch_size=4)


def _relabel(data: BlobData, labels: list[Any]) -> BlobData:
    data.labels = list(labels)
    return data


def _multilabel(data: BlobData, second: list[float]) -> BlobData:
    class Two(BlobData):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            item["label"] = torch.tensor([float(item["label"]), second[i]])
            return item

    data.__class__ = Two
    return data


def _one_class_val() -> BlobData:
    return _relabel(BlobData(8, seed=1), [0] * 8)


# name -> (make the finetune arguments, error class, words the message must contain)
ERRORS: dict[str, tuple[Any, type[Exception], list[str]]] = {
    "binary labels 1/2": (
        lambda: dict(train=_relabel(BlobData(8), [1, 2] * 4)),
        ValueError,
        ["binary labels must be 0 or 1", "got 2", "Map them to 0/1", "num_classes=K"],
    ),
    "binary label 2 after the first batch": (
        lambda: dict(train=_relabel(BlobData(8), [0, 1, 0, 1, 0, 1, 0, 2])),
        ValueError,
        ["binary labels must be 0 or 1", "got 2"],
    ),
    "binary label NaN (empty CSV cell)": (
        lambda: dict(train=_relabel(BlobData(8), [0, 1, math.nan, 1, 0, 1, 0, 1])),
        ValueError,
        ["binary labels must be 0 or 1", "nan", "missing (NaN)"],
    ),
    "binary labels -1/1 in val_data": (
        lambda: dict(val=_relabel(BlobData(8, seed=1), [-1, 1] * 4)),
        ValueError,
        ["binary labels must be 0 or 1", "got -1"],
    ),
    "multilabel soft label 0.5": (
        lambda: dict(train=_multilabel(BlobData(8), [0.5, 1.0] * 4), num_classes=2),
        ValueError,
        ["multilabel labels must be 0 or 1", "got 0.5"],
    ),
    "explicit AUROC monitor on a one-class val set": (
        lambda: dict(val=_one_class_val(), monitor="val_auroc"),
        ValueError,
        ["monitor='val_auroc' is undefined", "one class only", "all targets 0", "'val_loss'"],
    ),
    "unknown option (typo)": (
        lambda: dict(learning_rate=1e-3),
        TypeError,
        ["unknown option", "'learning_rate'", "did you mean 'lr'?"],
    ),
    "unknown option (near miss)": (
        lambda: dict(warmup_epoch=1),
        TypeError,
        ["'warmup_epoch' (did you mean 'warmup_epochs'?)"],
    ),
    "missing out_dir": (lambda: dict(out_dir=None), TypeError, ["needs out_dir="]),
    "epochs=0": (lambda: dict(epochs=0), ValueError, ["epochs must be an integer >= 1", "0"]),
    "precision='fp64'": (
        lambda: dict(precision="fp64"),
        ValueError,
        ["precision must be 'auto', 'fp32', 'bf16' or 'fp16'", "'fp64'"],
    ),
    "freeze='head'": (
        lambda: dict(freeze="head"),
        ValueError,
        ["freeze must be 'none', 'backbone' or 'stem'", "'head'"],
    ),
    "negative lr": (lambda: dict(lr=-1e-3), ValueError, ["lr must be a finite number >= 0"]),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_input_errors(case: str, tmp_path: Path) -> None:
    make, cls, words = ERRORS[case]
    kw = {**FAST, "out_dir": tmp_path, **make()}
    train, val = kw.pop("train", BlobData(8)), kw.pop("val", None)
    model = make_model(kw.pop("num_classes", 1))
    if kw["out_dir"] is None:
        del kw["out_dir"]
    with pytest.raises(cls) as e:
        finetune(model, train, val, **kw)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_one_class_validation_warns_at_start_and_monitors_val_loss(tmp_path: Path) -> None:
    class FailsInTraining(BlobData):
        loads = 0

        def __getitem__(self, i):
            FailsInTraining.loads += 1
            if FailsInTraining.loads > 1:  # the first load reads item 0's label (the task)
                raise RuntimeError("training started")
            return super().__getitem__(i)

    # the warning comes before any training step: a train set that fails when training starts
    train = _relabel(FailsInTraining(8), [0, 1] * 4)
    with (
        pytest.warns(SingleClassValidationWarning, match="one class only"),
        pytest.raises(RuntimeError, match="training started"),
    ):
        finetune(make_model(), train, _one_class_val(), out_dir=tmp_path / "a", **FAST)

    with pytest.warns(SingleClassValidationWarning) as rec:
        r = finetune(
            make_model(), BlobData(16), _one_class_val(), out_dir=tmp_path / "b",
            **{**FAST, "epochs": 3},
        )  # fmt: skip
    msg = str(rec[0].message)
    assert "all 8 targets are 0" in msg and "monitor='val_loss'" in msg
    assert r.monitor == "val_loss" and "one class only" in r.monitor_note
    losses = [h["val_loss"] for h in r.history]
    assert all(math.isnan(h["val_auroc"]) for h in r.history)
    assert r.best_epoch == 1 + losses.index(min(losses))
    assert r.best_metric == min(losses)

    # an explicit loss monitor is used as given, with the same warning
    with pytest.warns(SingleClassValidationWarning):
        r = finetune(
            make_model(), BlobData(16), _one_class_val(), out_dir=tmp_path / "c",
            monitor="val_loss", **FAST,
        )  # fmt: skip
    assert r.monitor == "val_loss"


def test_multilabel_val_with_one_single_class_label_warns_and_keeps_auroc(tmp_path: Path) -> None:
    train = _multilabel(BlobData(16), [float(i % 2) for i in range(16)])
    val = _multilabel(BlobData(8, seed=1), [1.0] * 8)  # label "b": positives only
    with pytest.warns(SingleClassValidationWarning, match=r"label\(s\) \['b'\]"):
        r = finetune(make_model(2), train, val, out_dir=tmp_path, label_names=["a", "b"], **FAST)
    assert r.monitor == "val_study_auroc" and r.monitor_note is None
    h = r.history[0]
    assert math.isnan(h["val_auroc/b"]) and h["val_auroc"] == h["val_auroc/a"]


def test_two_class_validation_gives_no_warning(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", SingleClassValidationWarning)
        r = finetune(make_model(), BlobData(8), BlobData(8, seed=1), out_dir=tmp_path, **FAST)
    assert r.monitor == "val_study_auroc" and r.monitor_note is None


def test_resume_of_an_early_stopped_run_with_more_epochs_warns(tmp_path: Path) -> None:
    kw = dict(lr=0.0, batch_size=8, patience=1, out_dir=tmp_path, progress=False)
    first = finetune(make_model(), BlobData(16), BlobData(8, seed=1), epochs=4, **kw)
    assert first.stopped_early and len(first.history) == 2  # no improvement at lr=0
    with pytest.warns(UserWarning, match="stopped early at epoch 2") as rec:
        again = finetune(
            make_model(), BlobData(16), BlobData(8, seed=1), epochs=6, resume=True, **kw
        )
    assert "does not train it further" in str(rec[0].message)
    assert again.history == first.history and again.stopped_early


def test_lr_has_a_documented_default() -> None:
    cfg = FinetuneConfig(out_dir="x")
    assert cfg.lr == 1e-4
    assert "1e-4" in (FinetuneConfig.__doc__ or "") and "AdamW" in (FinetuneConfig.__doc__ or "")
    assert "``lr`` (default ``0.0001``)" in (finetune.__doc__ or "")


def test_one_class_check_reads_ctdataset_labels_without_loading_volumes(tmp_path: Path) -> None:
    """The start-up label check is free for a CTDataset, also inside a Subset (the demo's)."""
    import numpy as np
    from torch.utils.data import Subset

    from ct3dzoo.data import CTDataset
    from ct3dzoo.train.batches import all_labels

    rows = ["path,pe"]
    for i in range(4):
        np.save(tmp_path / f"v{i}.npy", np.zeros((4, 8, 8), np.float32))
        rows.append(f"v{i}.npy,{i % 2}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")

    class NoLoading(CTDataset):
        def __getitem__(self, index):
            raise AssertionError("a volume was loaded")

    data = NoLoading(tmp_path / "m.csv", windows="pe")
    assert all_labels(data).flatten().tolist() == [0.0, 1.0, 0.0, 1.0]
    assert all_labels(Subset(data, [2, 1])).flatten().tolist() == [0.0, 1.0]
