"""The typed specs every other layer reads: weights rows, their input contracts, and
``load()``'s options.

Pure data: imports neither torch nor any other ct3dzoo module, so the registry, the CLI's
``list``/``info`` and the docs can use it without building a network.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "PRETRAIN_SOURCES",
    "InputContract",
    "ModelOptions",
    "WeightsSpec",
    "hu_range_contract",
    "window_contract",
    "zscore_contract",
]

#: the pretraining-source column of the model table
PRETRAIN_SOURCES = ("video", "imagenet", "ct")

ContractKind = Literal["window", "hu_range", "zscore"]


@dataclass(frozen=True)
class InputContract:
    """What the weights expect between an HU volume and the model's input.

    - ``"window"``: the user picks the HU window(s) (``ct3dzoo.data.apply_window``), the model
      takes [0, 1]; the weights' RGB ``mean``/``std`` are folded into the stem (video and
      ImageNet rows).
    - ``"hu_range"``: HU clipped to ``hu_range`` and scaled linearly to [0, 1] (the mapping
      the in-domain weights were trained with).
    - ``"zscore"``: ``(hu - mean) / std`` over the volume's voxels (MedicalNet).

    ``spacing`` (mm, D/H/W order = z, y, x), ``orientation`` and ``size`` (D, H, W) are set
    where the source states them. ``orientation`` gives MONAI's axis codes of the model
    input's ``(D, H, W)`` axes (each letter: where that axis's index increases towards), so
    ``"SPL"`` is ct3dzoo's own ``CTVolume`` layout.
    """

    kind: ContractKind
    hu_range: tuple[float, float] | None = None
    spacing: tuple[float, float, float] | None = None
    orientation: str | None = None
    size: tuple[int, int, int] | None = None
    size_divisor: tuple[int, int, int] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("window", "hu_range", "zscore"):
            raise ValueError(f"unknown input contract kind {self.kind!r}")
        if (self.kind == "hu_range") != (self.hu_range is not None):
            raise ValueError("an 'hu_range' contract (and only it) needs hu_range=(lo, hi)")
        if self.hu_range is not None and not self.hu_range[0] < self.hu_range[1]:
            raise ValueError(f"hu_range must be (lo, hi) with lo < hi, got {self.hu_range}")

    def describe(self) -> str:
        """One line for ``ct3dzoo info``, model cards and the model table."""
        if self.kind == "window":
            text = "HU window(s) of your choice -> [0, 1] (ct3dzoo.data.apply_window)"
        elif self.kind == "hu_range":
            lo, hi = self.hu_range  # type: ignore[misc]
            text = f"HU clipped to [{lo:g}, {hi:g}] and scaled to [0, 1]"
        else:
            text = "z-score over the volume's voxels: (HU - mean) / std"
        extra = []
        if self.spacing:
            extra.append("spacing " + " x ".join(f"{s:g}" for s in self.spacing) + " mm (D, H, W)")
        if self.orientation:
            extra.append(f"orientation {self.orientation}")
        if self.size:
            extra.append("trained at D x H x W = " + " x ".join(map(str, self.size)))
        if self.size_divisor:
            extra.append("D, H, W divisible by " + " x ".join(map(str, self.size_divisor)))
        return text + ("; " + "; ".join(extra) if extra else "")


def window_contract(source: str = "") -> InputContract:
    """The contract of video and ImageNet rows: any HU window, mean/std folded into the stem."""
    return InputContract(kind="window", source=source)


def hu_range_contract(lo: float, hi: float, **kw: Any) -> InputContract:
    """HU clipped to ``[lo, hi]`` and scaled to [0, 1]."""
    return InputContract(kind="hu_range", hu_range=(float(lo), float(hi)), **kw)


def zscore_contract(**kw: Any) -> InputContract:
    """A z-score over the volume (MedicalNet)."""
    return InputContract(kind="zscore", **kw)


@dataclass(frozen=True)
class WeightsSpec:
    """One pretrained-weights row, ``arch.tag`` (timm's ``PretrainedCfg``, typed and frozen).

    Sources: ``url`` (direct download, verified by ``hash_prefix``/``sha256`` when
    published) and/or a Hub file ``hf_hub_id`` + ``hf_hub_filename`` at ``hf_hub_revision``.
    ``file_format`` names how the file is laid out (``torchvision`` state dict,
    ``pytorchvideo`` ``{"model_state": ...}``, ``penet``, ...). ``stem``: the input conv layer
    names (upstream naming) whose RGB kernels are folded; ``classifier``: the upstream key
    prefixes of the source classifier. ``input_size``: the native clip ``(C, T, H, W)``.
    """

    arch: str
    tag: str
    pretrain_source: Literal["video", "imagenet", "ct"]
    file_format: str
    input_contract: InputContract
    license: str
    citation: str
    url: str | None = None
    filename: str | None = None
    hash_prefix: str | None = None
    sha256: str | None = None
    hf_hub_id: str | None = None
    hf_hub_filename: str | None = None
    hf_hub_revision: str | None = None
    url_info: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_size: tuple[int, ...] | None = None
    stem: tuple[str, ...] = ()
    classifier: tuple[str, ...] = ()
    num_classes: int | None = None
    dataset: str | None = None
    publisher: str | None = None
    paper: str | None = None
    notes: str | None = None
    upstream_arch: str | None = None

    def __post_init__(self) -> None:
        if self.pretrain_source not in PRETRAIN_SOURCES:
            raise ValueError(f"{self.name}: pretrain_source must be one of {PRETRAIN_SOURCES}")
        if not self.license or not self.citation:
            raise ValueError(f"{self.name}: every weights row needs its licence and citation")
        if (self.mean is None) != (self.std is None):
            raise ValueError(f"{self.name}: give mean and std together")
        if self.stem and self.mean is None:
            raise ValueError(f"{self.name}: folding stems {self.stem} needs the weights' mean/std")

    @property
    def name(self) -> str:
        """``arch.tag``."""
        return f"{self.arch}.{self.tag}"

    @property
    def download_filename(self) -> str:
        """The upstream file's name (for messages and the download's temporary file)."""
        if self.filename:
            return self.filename
        if self.url:
            return self.url.rsplit("/", 1)[-1]
        return self.hf_hub_filename or "the checkpoint file"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``config.json``, ``ct3dzoo info --json``, the catalog)."""
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WeightsSpec:
        d = dict(d)
        contract = d.pop("input_contract")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"unknown weights spec keys: {unknown}")
        return cls(input_contract=_contract_from_dict(contract), **_tuplify(d))


def _contract_from_dict(d: Mapping[str, Any]) -> InputContract:
    return InputContract(**_tuplify(dict(d)))


def _tuplify(d: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


@dataclass(frozen=True)
class ModelOptions:
    """``load()``/``create_model()``'s options with their defaults: the one place they live.

    ``load``'s signature, the CLI (``ct3dzoo finetune``, ``ct3dzoo demo``), ``config.json`` and
    the ``hf-hub:``/``local-dir:`` overrides all derive from these fields.
    """

    num_classes: int = field(
        default=1, metadata={"help": "outputs of the new head; 0 returns pre-logits features"}
    )
    in_chans: int = field(
        default=1,
        metadata={"help": "input channels: 1 HU window, 3 windows as RGB, n: repeat+rescale"},
    )
    head: str | Any = field(
        default="linear",
        metadata={
            "help": "head: linear, mlp, attention, segmentation (or a module / factory in Python)"
        },
    )
    drop_rate: float = field(default=0.0, metadata={"help": "dropout before the classifier"})
    num_slices: int | None = field(
        default=None, metadata={"help": "input D for size-dependent archs (MViT, Swin)"}
    )
    image_size: tuple[int, int] | None = field(
        default=None, metadata={"help": "input H W for size-dependent archs"}
    )

    def __post_init__(self) -> None:
        for key in ("num_classes", "in_chans"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{key} must be an int, got {v!r} ({type(v).__name__})")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")
        if self.in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {self.in_chans}")
        if not isinstance(self.drop_rate, (int, float)) or not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate!r}")
        if self.num_slices is not None and (
            isinstance(self.num_slices, bool)
            or not isinstance(self.num_slices, int)
            or self.num_slices < 1
        ):
            raise ValueError(
                f"num_slices must be a positive int (slices D) or None, got {self.num_slices!r}"
            )
        if self.image_size is not None:
            size = self.image_size
            if isinstance(size, int) and not isinstance(size, bool):
                size = (size, size)
            size = tuple(size)
            if len(size) != 2 or any(
                isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size
            ):
                raise ValueError(
                    f"image_size must be a positive int or (H, W) of positive ints, got "
                    f"{self.image_size!r}"
                )
            object.__setattr__(self, "image_size", size)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def default(cls, name: str) -> Any:
        return next(f.default for f in dataclasses.fields(cls) if f.name == name)

    @classmethod
    def help(cls, name: str) -> str:
        return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)

    @classmethod
    def cli_kwargs(cls, name: str) -> dict[str, Any]:
        """``argparse.add_argument`` keywords for option ``name`` (default, help, type), so a
        command line never restates a default."""
        f = next(f for f in dataclasses.fields(cls) if f.name == name)
        kw: dict[str, Any] = {
            "default": f.default,
            "help": f"{f.metadata['help']} (default {f.default})",
        }
        if name in ("num_classes", "in_chans", "num_slices"):
            kw["type"] = int
        elif name == "drop_rate":
            kw["type"] = float
        elif name == "image_size":
            kw.update(type=int, nargs="+", metavar=("H", "W"))
        return kw

    def is_default(self, name: str) -> bool:
        value, default = getattr(self, name), self.default(name)
        return value is default or (isinstance(value, (int, float, str)) and value == default)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.names()}
        if d["image_size"] is not None:
            d["image_size"] = list(d["image_size"])
        if not isinstance(d["head"], str):
            d["head"] = "custom"
        return d
