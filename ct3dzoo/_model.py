"""The base class every ct3dzoo model derives from."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import _publish, _registry
from ._features import FeatureInfo, Stage, take_indices
from ._specs import WeightsSpec
from .adapt import FoldedStemConv
from .data.pipeline import Preprocessing
from .heads import AttentionPool, ClassifierHead, HeadSpec, SegmentationHead, create_fc

__all__ = ["CTModel", "run_blocks", "run_blocks_thw"]


def _call_on_list(block: nn.Module, *xs: torch.Tensor) -> Any:
    return block(list(xs))  # a fresh list: multi-pathway blocks mutate theirs in place


def run_blocks(blocks: Sequence[nn.Module], x: Any, enabled: bool) -> Any:
    """Run ``blocks`` in order, recomputing each in the backward pass when ``enabled``.

    ``x`` is a tensor or, for multi-pathway networks, a list of tensors.
    """
    for block in blocks:
        if not (enabled and torch.is_grad_enabled()):
            x = block(x)
        elif isinstance(x, (list, tuple)):
            x = checkpoint(_call_on_list, block, *x, use_reentrant=False)
        else:
            x = checkpoint(block, x, use_reentrant=False)
    return x


def run_blocks_thw(
    blocks: Sequence[nn.Module], x: torch.Tensor, thw: Sequence[int], enabled: bool
) -> torch.Tensor:
    """Run MViT-style blocks ``(x, thw) -> (x, thw)``, optionally with checkpointing."""
    thw = tuple(thw)
    for block in blocks:
        if enabled and torch.is_grad_enabled():
            x, thw = checkpoint(block, x, thw, use_reentrant=False)
        else:
            x, thw = block(x, thw)
    return x, tuple(thw)


class CTModel(nn.Module):
    """A video network adapted to CT volumes.

    Input: ``(B, in_chans, D, H, W)`` float, HU already windowed to [0, 1]; D = slices.
    The stem convolution(s) fold the weights' own mean/std in, so no normalisation is needed.

    Subclasses set ``self.backbone`` and declare their :meth:`stages` (plus, when the state
    between stages is not a ``(B, C, D, H, W)`` map, :meth:`_stage_input`, :meth:`_stage_map`
    and :meth:`_final_features`); ``forward_features``, ``forward_intermediates``,
    ``feature_info``, ``head="segmentation"`` and Grad-CAM all follow from that declaration.
    """

    arch: str = ""
    #: prefix under which the upstream's own module tree lives (upstream key -> our key)
    upstream_prefix: str = "backbone."
    #: state-dict prefixes of modules the upstream does not have (initialised fresh)
    fresh_prefixes: tuple[str, ...] = ("head.",)
    #: feature layout returned by forward_features: "ncdhw", "nlc_cls" or "pathways"
    feature_format: str = "ncdhw"

    def __init__(
        self,
        *,
        num_classes: int,
        in_chans: int,
        head: HeadSpec,
        drop_rate: float,
        feature_dim: int | Sequence[int],
        num_features: int,
        default_pool: nn.Module,
        spec: WeightsSpec | None,
        min_size: Sequence[int] = (1, 1, 1),
        fixed_size: Sequence[int] | None = None,
        size_divisor: Sequence[int] = (1, 1, 1),
        stem_names: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.feature_dim = feature_dim
        self.num_features = num_features
        self.drop_rate = drop_rate
        #: the weights spec this model was built for (None: an arch without weights)
        self.pretrained_cfg: WeightsSpec | None = spec
        self.min_size = tuple(min_size)
        self.fixed_size = None if fixed_size is None else tuple(fixed_size)
        self.size_divisor = tuple(size_divisor)
        self.stem_names = tuple(stem_names)
        self.grad_checkpointing = False
        #: check each input for NaN/inf and for values far outside the contract (see
        #: :meth:`check_values`)
        self.value_checks = True
        self._warned_range = False
        self._default_pool = (default_pool,)  # a tuple: not registered twice as a submodule
        self.pre_logits: nn.Module = nn.Identity()
        self.head = self._make_head(head, num_classes)
        self.model_config: dict[str, Any] = {}
        #: the training record: everything between a study on disk and this model's input,
        #: plus label names, task and validation metrics (set by ``finetune``, saved as
        #: ``preprocessor_config.json``, restored by ``load``); None for source weights
        self.preprocessing: Preprocessing | None = None

    # ------------------------------------------------------------------ head
    def _make_head(self, head: HeadSpec, num_classes: int) -> nn.Module:
        if isinstance(head, str) and head == "segmentation":
            if num_classes < 1:
                raise ValueError("head='segmentation' needs num_classes >= 1 (one logit map each)")
            if not hasattr(self, "backbone"):
                raise ValueError(
                    "head='segmentation' is built over the stages: create the model with "
                    "ct3dzoo.load/create_model (or call reset_classifier(n, 'segmentation'))"
                )
            return SegmentationHead([s.num_chs for s in self.stages()], num_classes)
        if isinstance(head, str) and head == "attention":
            pool: nn.Module = AttentionPool(
                self.feature_dim, has_cls_token=self.feature_format == "nlc_cls"
            )
            kind = "attention"
        else:
            pool = self._default_pool[0]
            kind = head if isinstance(head, str) else "custom"
        fc = create_fc(head, self.num_features, num_classes)
        return ClassifierHead(pool, fc, self.drop_rate, kind=kind)

    def get_classifier(self) -> nn.Module:
        """The final classifier (``head.fc``; the 1x1x1 conv of a segmentation head)."""
        return self.head.fc

    def reset_classifier(self, num_classes: int, head: HeadSpec | None = None) -> None:
        """Replace the head by a fresh one with ``num_classes`` outputs (0: pre-logits)."""
        kind = self.head.kind if head is None else head
        if kind == "custom":
            raise ValueError("the current head is a custom module: pass head= to reset it")
        device = next(self.parameters()).device
        self.head = self._make_head(kind, num_classes).to(device)
        self.num_classes = num_classes
        self.model_config.update(num_classes=num_classes)
        if isinstance(kind, str):
            self.model_config.update(head=kind)

    # --------------------------------------------------------------- forward
    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error when ``x`` is not ``(B, in_chans, D, H, W)`` of a usable size."""
        name = self.arch or type(self).__name__
        expected = f"(B, {self.in_chans}, D, H, W)"
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} expects a torch.Tensor {expected}, got {type(x).__name__}")
        if x.ndim != 5:
            hint = ""
            if x.ndim == 3:
                hint = " For one (D, H, W) volume use x[None, None]."
            elif x.ndim == 4:
                hint = " For one (C, D, H, W) volume use x[None]."
            raise ValueError(
                f"{name} expects a 5-D tensor {expected}, got shape {tuple(x.shape)}.{hint}"
            )
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"{name} was built for in_chans={self.in_chans}, so it expects {expected}; got "
                f"{x.shape[1]} channels (shape {tuple(x.shape)}). Load it with "
                f"in_chans={x.shape[1]} or window the volume into {self.in_chans} channel(s)."
            )
        if not x.is_floating_point():
            raise TypeError(
                f"{name} expects a float tensor in [0, 1] (HU windowed), got {x.dtype}; "
                "use ct3dzoo.data.apply_window"
            )
        dhw = tuple(x.shape[2:])
        if any(s < m for s, m in zip(dhw, self.min_size)):
            raise ValueError(
                f"{name} needs volumes of at least D x H x W = "
                f"{'x'.join(map(str, self.min_size))}; got {'x'.join(map(str, dhw))}"
            )
        if self.fixed_size is not None and dhw != self.fixed_size:
            raise ValueError(
                f"{name} was built for D x H x W = {'x'.join(map(str, self.fixed_size))} (its "
                f"position embeddings depend on the size); got {'x'.join(map(str, dhw))}. Build "
                f"it for that size with load(..., num_slices={dhw[0]}, image_size=({dhw[1]}, "
                f"{dhw[2]})): embeddings are resampled."
            )
        bad = [s for s, d in zip(dhw, self.size_divisor) if s % d]
        if bad:
            raise ValueError(
                f"{name} needs D, H, W divisible by {self.size_divisor}; got "
                f"{'x'.join(map(str, dhw))}"
            )

    def check_values(self, x: torch.Tensor) -> None:
        """Raise on NaN/inf voxels; warn once per model when values are far outside what the
        weights expect (e.g. raw HU fed to a model that takes [0, 1]).

        One reduction and one host sync per call; set ``model.value_checks = False`` to skip
        (skipped under ``torch.compile`` too).
        """
        if not self.value_checks or x.numel() == 0 or x.is_meta or torch.compiler.is_compiling():
            return
        lo, hi = (float(v) for v in torch.aminmax(x.detach()))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            n_nan = int(torch.isnan(x).sum())
            n_inf = int(torch.isinf(x).sum())
            raise ValueError(
                f"{self.arch or type(self).__name__}: the input has {n_nan} NaN and {n_inf} "
                f"infinite voxel(s) of {x.numel()}; fix them before the model (e.g. "
                "torch.nan_to_num, or check the reader and the resampling)"
            )
        zscore = (
            self.pretrained_cfg is not None and self.pretrained_cfg.input_contract.kind == "zscore"
        )
        allowed = (-50.0, 50.0) if zscore else (-1.0, 2.0)
        if (lo < allowed[0] or hi > allowed[1]) and not self._warned_range:
            self._warned_range = True
            expect = "z-scores" if zscore else "values in [0, 1]"
            warnings.warn(
                f"{self.arch or type(self).__name__} got values in [{lo:g}, {hi:g}] but expects "
                f"{expect}: this looks like raw HU; window it first "
                "(ct3dzoo.data.apply_window, or ct3dzoo.data.transforms_for(model)). "
                "This warning is shown once per model.",
                UserWarning,
                stacklevel=3,
            )

    def adapt_upstream_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Family hook: rename/resample upstream tensors (upstream key names) for this model's
        size, e.g. position embeddings. The default is the identity."""
        return sd

    def upstream_key(self, key: str) -> str:
        """Where an upstream state-dict key lives in this model."""
        return self.upstream_prefix + key

    def _forward_features(self, x: torch.Tensor) -> Any:
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> Any:
        """The unpooled feature map: ``(B, C, T', H', W')`` for CNNs and Swin, ``(B, 1 + N, C)``
        tokens (class token first, after the final norm) for MViT, a list of two maps for
        SlowFast.

        ``x`` of another float dtype (float64, float16) is cast to the model's parameter dtype
        (outside autocast); NaN/inf voxels raise (:meth:`check_values`)."""
        return self._forward_features(self._prepare_input(x))

    def _prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        self.check_values(x)
        dtype = self._param_dtype()
        if dtype is not None and x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(dtype)  # float64/float16 input: computed in the model's own dtype
        return x

    def _param_dtype(self) -> torch.dtype | None:
        p = next(self.parameters(), None)
        return None if p is None else p.dtype

    def forward_head(self, features: Any, pre_logits: bool = False) -> torch.Tensor:
        """Pool the features; return ``(B, num_features)`` pre-logits or ``(B, num_classes)``."""
        if isinstance(self.head, SegmentationHead):
            raise ValueError(
                "this model has a segmentation head: call model(x) (it decodes all stages), "
                "or model.forward_intermediates(x) for the maps"
            )
        x = self.pre_logits(self.head.pool(features))
        if pre_logits:
            return x
        return self.head.fc(self.head.drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, D, H, W)`` in [0, 1] -> logits ``(B, num_classes)`` (or pre-logits
        ``(B, num_features)`` when ``num_classes == 0``); with ``head="segmentation"``,
        logits ``(B, num_classes, D, H, W)`` at the input size."""
        if isinstance(self.head, SegmentationHead):
            maps = self.forward_intermediates(x, intermediates_only=True)
            return self.head(maps, x.shape[2:])
        return self.forward_head(self.forward_features(x))

    # ---------------------------------------------------------------- stages
    def stages(self) -> list[Stage]:
        """The backbone as consecutive :class:`~ct3dzoo._features.Stage`s (family-declared)."""
        raise NotImplementedError(f"{type(self).__name__} declares no stages")

    def _stage_input(self, x: torch.Tensor) -> Any:
        """The state the first stage takes (SlowFast: its two pathways)."""
        return x

    def _stage_map(self, state: Any) -> torch.Tensor:
        """The state after a stage as a ``(B, C, D, H, W)`` map (tokens are reshaped)."""
        return state

    def _final_features(self, state: Any) -> Any:
        """The state after the last stage in :meth:`forward_features`' layout."""
        return state

    def _forward_features(self, x: torch.Tensor) -> Any:
        state = self._stage_input(x)
        for stage in self.stages():
            state = stage.run(state)
        return self._final_features(state)

    def cam_layer(self) -> str:
        """The module Grad-CAM hooks by default: the last stage's."""
        return self.stages()[-1].module

    def cam_reshape(self, output: torch.Tensor, input_shape: Sequence[int]) -> torch.Tensor:
        """A hooked layer's output as a ``(B, C, D, H, W)`` map (family-specific layouts)."""
        return output

    @property
    def feature_info(self) -> FeatureInfo:
        """Every stage's channels, stride ``(d, h, w)`` and module name (timm style)."""
        stages = self.stages()
        return FeatureInfo(stages, range(len(stages)))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        stop_early: bool = False,
        intermediates_only: bool = False,
    ) -> Any:
        """Per-stage maps, as timm's ``forward_intermediates``.

        Args:
            x: ``(B, in_chans, D, H, W)`` in [0, 1].
            indices: ``None`` every stage, an int ``n`` the last ``n``, or a list of stage
                indices (negative from the end); see :attr:`feature_info`.
            stop_early: do not run the stages after the last one taken.
            intermediates_only: return only the maps.

        Returns:
            ``(final_features, [maps])`` or ``[maps]``; each map is ``(B, C, D', H', W')``
            with ``D' = ceil(D / stride_d)`` etc. ``final_features`` is what
            :meth:`forward_features` returns when every stage ran (after ``stop_early``: the
            last stage run, in that layout).
        """
        x = self._prepare_input(x)
        stages = self.stages()
        take = take_indices(len(stages), indices)
        if stop_early or intermediates_only:
            stages = stages[: take[-1] + 1]
        state, maps = self._stage_input(x), []
        for i, stage in enumerate(stages):
            state = stage.run(state)
            if i in take:
                maps.append(self._stage_map(state))
        if intermediates_only:
            return maps
        return self._final_features(state), maps

    # ----------------------------------------------------------------- misc
    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the backbone's stages in the backward pass to save activation memory."""
        self.grad_checkpointing = bool(enable)

    def stem_modules(self) -> list[nn.Module]:
        """The input stem(s): folded convolution and what directly follows it."""
        return [self.get_submodule(n) for n in self.stem_names]

    def stem_convs(self) -> Iterator[tuple[str, nn.Module]]:
        for name, m in self.named_modules():
            if isinstance(m, FoldedStemConv):
                yield name, m

    @classmethod
    def from_pretrained(cls, model_id: str | os.PathLike, **kwargs: Any) -> CTModel:
        """transformers-style alias of :func:`ct3dzoo.load` for a saved model: a folder,
        ``local-dir:PATH`` or ``hf-hub:ORG/NAME`` (with its preprocessing attached)."""
        ref = str(model_id)
        if not ref.startswith(("hf-hub:", "local-dir:")):
            ref = f"local-dir:{ref}"
        return _registry.model_loader()(ref, **kwargs)

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> Any:
        """Write ``config.json``, ``model.safetensors``, ``preprocessor_config.json`` (when
        the model has a training record) and a README model card."""
        return _publish.save_pretrained(self, save_directory, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Upload what :meth:`save_pretrained` writes to a Hugging Face Hub repo."""
        return _publish.push_to_hub(self, repo_id, **kwargs)
