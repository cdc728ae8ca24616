"""Dataset glue: a resumable, epoch-seeded sampler, per-item seeding and batch unpacking."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler, Subset

from .metrics import Task

__all__ = [
    "Batch",
    "EpochSampler",
    "IndexedDataset",
    "all_labels",
    "infer_task",
    "item_label",
    "make_targets",
    "metric_targets",
    "unpack",
]

_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """A well-spread 63-bit seed from integers (splitmix64 steps)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 31
    return h >> 1


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` keys for :class:`IndexedDataset`.

    The order is a function of ``(seed, epoch)`` only: with ``shuffle`` it is the very
    permutation ``DistributedSampler(seed=seed).set_epoch(epoch)`` draws, padded to a multiple
    of ``num_replicas`` and sharded ``rank::num_replicas`` the same way. ``weights`` draws
    ``len(dataset)`` indices with replacement instead (class-balanced sampling). ``start``
    skips the first indices of this rank's share, to resume mid-epoch.
    """

    def __init__(
        self,
        num_items: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        weights: torch.Tensor | None = None,
        pad: bool = True,
    ) -> None:
        self.num_items = num_items
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.weights = weights
        self.pad = pad
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, *, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def indices(self) -> list[int]:
        """This rank's indices for the current epoch, before ``start`` is applied."""
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.num_items, True, generator=g).tolist()
        elif self.shuffle:
            order = torch.randperm(self.num_items, generator=g).tolist()
        else:
            order = list(range(self.num_items))
        if self.pad:
            total = math.ceil(self.num_items / self.num_replicas) * self.num_replicas
            order += (order * math.ceil(total / max(len(order), 1)))[: total - len(order)]
        return order[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in self.indices()[self.start :]:
            yield self.epoch, i

    def __len__(self) -> int:
        if self.pad:
            share = math.ceil(self.num_items / self.num_replicas)
        else:
            share = len(range(self.rank, self.num_items, self.num_replicas))
        return max(share - self.start, 0)


class IndexedDataset(Dataset):
    """Wraps a dataset so items come back as ``(index, item)`` for ``(epoch, index)`` keys.

    With a ``seed``, each item is loaded under CPU RNG states (torch, NumPy, ``random``) seeded
    from ``(seed, epoch, index)`` and restored afterwards: random augmentation depends neither
    on worker count, rank, nor where a resumed run picked up, and does not disturb the
    training process's own RNG stream.
    """

    def __init__(self, dataset: Any, *, seed: int | None = None) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, Any]:
        epoch, index = key
        if self.seed is None:
            return index, self.dataset[index]
        s = mix_seed(self.seed, epoch, index)
        py_state = random.getstate()
        np_state = _np_get_state()
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(s)
            random.seed(s)
            _np_seed(s)
            try:
                item = self.dataset[index]
            finally:
                random.setstate(py_state)
                _np_set_state(np_state)
        return index, item


def _np_get_state() -> Any:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return None
    return np.random.get_state()


def _np_seed(seed: int) -> None:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return
    np.random.seed(seed % (1 << 32))


def _np_set_state(state: Any) -> None:
    if state is not None:
        import numpy as np

        np.random.set_state(state)


class Batch:
    """One collated batch: images, labels (or None) and group keys (or None)."""

    __slots__ = ("groups", "image", "index", "label")

    def __init__(
        self,
        index: torch.Tensor,
        image: torch.Tensor,
        label: torch.Tensor | None,
        groups: list[str] | None,
    ) -> None:
        self.index, self.image, self.label, self.groups = index, image, label, groups


def _split_item(item: Any) -> tuple[Any, Any, Any]:
    if isinstance(item, dict):
        if "image" not in item:
            raise KeyError(f"dataset items are dicts without an 'image' key: {sorted(item)}")
        return item["image"], item.get("label"), item.get("group")
    if isinstance(item, (tuple, list)):
        if not 1 <= len(item) <= 3:
            raise ValueError(
                f"dataset items must be (x,), (x, y) or (x, y, group); got {len(item)}"
            )
        return tuple(item) + (None,) * (3 - len(item))  # type: ignore[return-value]
    return item, None, None


def unpack(collated: Any) -> Batch:
    """Turn a collated ``(index, item)`` batch from :class:`IndexedDataset` into a Batch."""
    index, item = collated
    image, label, groups = _split_item(item)
    if not isinstance(image, torch.Tensor) or image.dim() != 5:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"batched images must be (B, C, D, H, W) tensors, got {shape}")
    if label is not None:
        label = torch.as_tensor(label)
    if groups is not None:
        groups = [str(g) for g in (groups.tolist() if torch.is_tensor(groups) else groups)]
    return Batch(index, image, label, groups)


def item_label(dataset: Any, index: int) -> torch.Tensor:
    """The label of one item (from a ``CTDataset``'s manifest without decoding, also through
    ``torch.utils.data.Subset``; else, e.g. for masks, by loading the item)."""
    from ..data import CTDataset

    if isinstance(dataset, Subset):
        return item_label(dataset.dataset, int(dataset.indices[index]))
    if isinstance(dataset, CTDataset) and dataset.mask_column is None:
        return torch.tensor(dataset.records[index]["labels"], dtype=torch.float32)
    _, label, _ = _split_item(dataset[index])
    if label is None:
        raise ValueError(f"item {index} of the dataset has no label")
    return torch.as_tensor(label)


def all_labels(dataset: Any) -> torch.Tensor:
    """Every item's label stacked ``(N, ...)`` (free for a ``CTDataset``: its manifest;
    otherwise each item is loaded once)."""
    return torch.stack([torch.as_tensor(item_label(dataset, i)) for i in range(len(dataset))])


def infer_task(label: torch.Tensor, num_classes: int) -> Task:
    """Binary, multi-label or multi-class from one item's label and the model's outputs;
    segmentation when the label is a mask ``(D, H, W)`` or ``(C, D, H, W)``."""
    if num_classes < 1:
        raise ValueError(f"the model has num_classes={num_classes}; finetuning needs a classifier")
    if label.dim() >= 3:
        return "segmentation"
    if label.numel() == 1 and label.dim() <= 1:
        if num_classes == 1:
            return "binary"
        if _integral(label):
            return "multiclass"
        raise ValueError(
            f"label shape {tuple(label.shape)} does not match model.num_classes={num_classes}: "
            f"give integer class indices for multi-class or {num_classes}-vectors for multi-label"
        )
    if label.dim() == 1 and label.numel() == num_classes:
        return "multilabel"
    raise ValueError(
        f"label shape {tuple(label.shape)} does not match model.num_classes={num_classes} "
        f"(expected a scalar or a ({num_classes},) vector per item)"
    )


def make_targets(label: torch.Tensor, task: Task, num_classes: int) -> torch.Tensor:
    """Loss targets: float ``(B, L)`` for BCE, long ``(B,)`` for cross-entropy, float
    ``(B, C, D, H, W)`` masks for segmentation."""
    b = label.shape[0]
    if task == "segmentation":
        return _mask_targets(label, num_classes)
    if task == "multiclass":
        if label.is_floating_point() and label.shape == (b, num_classes):
            return label.float()  # soft targets / one-hot
        label = label.reshape(b) if label.numel() == b else label
        if label.shape != (b,) or not _integral(label):
            raise ValueError(
                f"label batch shape {tuple(label.shape)} does not match model.num_classes="
                f"{num_classes} for multi-class (expected integer class indices)"
            )
        if (label < 0).any() or (label >= num_classes).any():
            raise ValueError(f"class indices must lie in [0, {num_classes}); got {label.tolist()}")
        return label.long()
    target = label.float().reshape(b, -1) if label.numel() == b * num_classes else label.float()
    if target.shape != (b, num_classes):
        raise ValueError(
            f"label batch shape {tuple(label.shape)} does not match model.num_classes="
            f"{num_classes} ({task} needs ({b}, {num_classes}))"
        )
    bad = target[(target != 0) & (target != 1)]
    if bad.numel():
        values = sorted({float(v) for v in bad.tolist()}, key=lambda v: (math.isnan(v), v))
        shown = ", ".join(f"{v:g}" for v in values[:8]) + (", ..." if len(values) > 8 else "")
        raise ValueError(
            f"{task} labels must be 0 or 1, got {shown}. Map them to 0/1 (e.g. 1/2 -> 0/1), "
            "fill or drop missing (NaN) labels, or, for K classes 0..K-1, use a model with "
            "num_classes=K (multi-class)"
        )
    return target


def _mask_targets(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A batch of 0/1 masks ``(B, D, H, W)`` or ``(B, C, D, H, W)`` as float
    ``(B, num_classes, D, H, W)``."""
    if label.dim() == 4 and num_classes == 1:
        label = label.unsqueeze(1)
    if label.dim() != 5 or label.shape[1] != num_classes:
        raise ValueError(
            f"segmentation masks must be ({num_classes}, D, H, W) per item for a model with "
            f"num_classes={num_classes} (or (D, H, W) when it is 1); got a batch of shape "
            f"{tuple(label.shape)}. For K exclusive classes in one label map, one-hot it to "
            "(K, D, H, W)"
        )
    target = label.float()
    if ((target != 0) & (target != 1)).any():
        values = sorted({float(v) for v in target.unique()[:8].tolist()})
        raise ValueError(
            f"segmentation masks must hold 0 and 1 only, got values {values}; threshold or "
            "map them (a mask resampled with trilinear interpolation needs mode='nearest')"
        )
    return target


def _integral(label: torch.Tensor) -> bool:
    """Integer dtype, or floats holding whole numbers (a class index read from a CSV)."""
    if not label.is_floating_point():
        return label.dtype != torch.bool
    return bool(torch.isfinite(label).all() and (label == label.round()).all())


def metric_targets(targets: torch.Tensor, task: Task, num_classes: int) -> torch.Tensor:
    """``(N, L)`` binary targets for the metrics (one-hot for multi-class)."""
    if task == "multiclass" and targets.dim() == 1:
        return torch.nn.functional.one_hot(targets.long(), num_classes).float()
    return targets.float()


def balanced_weights(labels: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-item sampling weights ``1 / count(label)`` (label vectors compared whole)."""
    keys = [tuple(torch.as_tensor(y).flatten().tolist()) for y in labels]
    counts = Counter(keys)
    return torch.tensor([1.0 / counts[k] for k in keys], dtype=torch.double)
