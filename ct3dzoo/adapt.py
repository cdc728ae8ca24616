"""Exact adaptation of RGB video weights to n-channel CT input.

The upstream models see ``normalize(rgb, mean, std)`` zero-padded at the borders of every
convolution. ct3dzoo models see the HU-windowed volume ``x`` in [0, 1] directly. For a stem
convolution ``W`` (``C_out x 3 x k``) and grey input repeated to RGB::

    conv(pad0((x - m) / s), W) = conv(pad0(x), sum_c W_c / s_c) + conv(pad0(1), -sum_c W_c m_c / s_c)

The first term is a 1-channel convolution (1/3 of the upstream stem's work). The second
does not depend on the data: it is a *bias map* over the output grid that is constant in the
interior and differs only where the kernel overlaps the zero padding. :class:`FoldedStemConv`
carries it exactly, computed separably from the input shape (cheap) and cached per shape.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FoldedStemConv",
    "fold_stem_weight",
    "offset_weight",
    "resample_pos_embed_1d",
    "resample_pos_embed_2d",
]


def _ntuple(v: int | Sequence[int], n: int) -> tuple[int, ...]:
    if isinstance(v, int):
        return (v,) * n
    t = tuple(int(i) for i in v)
    if len(t) != n:
        raise ValueError(f"expected {n} values, got {t}")
    return t


def _stats(
    mean: Sequence[float], std: Sequence[float], weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.as_tensor(mean, dtype=torch.float64, device=weight.device)
    s = torch.as_tensor(std, dtype=torch.float64, device=weight.device)
    if m.numel() != weight.shape[1] or s.numel() != weight.shape[1]:
        raise ValueError(
            f"mean/std have {m.numel()}/{s.numel()} values but the stem kernel has "
            f"{weight.shape[1]} input channels"
        )
    shape = (1, -1) + (1,) * (weight.ndim - 2)
    return m.view(shape), s.view(shape)


def fold_stem_weight(
    weight: torch.Tensor, mean: Sequence[float], std: Sequence[float], in_chans: int
) -> torch.Tensor:
    """Fold ``(x - mean) / std`` into an RGB stem kernel and map it to ``in_chans`` inputs.

    ``weight``: ``(C_out, 3, *k)`` (2-D or 3-D kernels). Returns ``(C_out, in_chans, *k)``:

    - ``in_chans=1``: ``sum_c W_c / s_c`` — exact for grey input repeated to RGB.
    - ``in_chans=3``: ``W_c / s_c`` — three windows as the three colour channels, exact.
    - other n: ``W_{i mod 3} / s_{i mod 3} * 3 / n`` (timm's repeat-and-rescale); exact when
      all n channels carry the same image and n is a multiple of 3.
    """
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    dtype = weight.dtype
    w = weight.detach().to(torch.float64)
    _, s = _stats(mean, std, w)
    w = w / s
    src = w.shape[1]
    if in_chans == 1:
        out = w.sum(dim=1, keepdim=True)
    elif in_chans == src:
        out = w
    else:
        reps = math.ceil(in_chans / src)
        out = w.repeat(1, reps, *([1] * (w.ndim - 2)))[:, :in_chans] * (src / in_chans)
    return out.to(dtype)


def offset_weight(
    weight: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """The kernel that the constant field ``-mean / std`` meets: ``-sum_c W_c m_c / s_c``.

    Returns ``(C_out, 1, *k)``; convolving the zero-padded all-ones volume with it gives the
    data-independent part of the upstream stem's output.
    """
    w = weight.detach().to(torch.float64)
    m, s = _stats(mean, std, w)
    return (-(w * m / s).sum(dim=1, keepdim=True)).to(weight.dtype)


def _indicator(
    n_in: int, n_valid: int, k: int, stride: int, pad: int, dil: int, device, dtype
) -> torch.Tensor:
    """``I[o, a] = 1`` when tap ``a`` of output ``o`` reads a real (not padded) input."""
    n_out = (n_in + 2 * pad - dil * (k - 1) - 1) // stride + 1
    if n_out < 1:
        raise ValueError(f"input extent {n_in} is too small for kernel {k} with padding {pad}")
    pos = torch.arange(n_out, device=device)[:, None] * stride - pad
    pos = pos + torch.arange(k, device=device)[None, :] * dil
    return ((pos >= 0) & (pos < n_valid)).to(dtype)


class FoldedStemConv(nn.Module):
    """A stem ``Conv3d`` (or ``Conv2d``) with the input normalisation folded in, exactly.

    Input ``(B, in_chans, D, H, W)`` (or ``(B, in_chans, H, W)``) in [0, 1]; output equals
    the upstream RGB convolution on the normalised, channel-repeated input, borders
    included. Parameters: ``weight`` ``(C_out, in_chans, *k)``, ``offset`` ``(C_out, 1, *k)``
    (the kernel the constant ``-mean/std`` field meets; trainable, so fine-tuning can move
    the border response like the upstream's would) and ``bias`` (when the upstream has one).
    """

    def __init__(
        self,
        conv: nn.Conv3d | nn.Conv2d,
        *,
        in_chans: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        if not isinstance(conv, (nn.Conv3d, nn.Conv2d)):
            raise TypeError(f"FoldedStemConv wraps nn.Conv3d/Conv2d, got {type(conv).__name__}")
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(
                "only ungrouped, explicitly zero-padded stem convolutions can be folded"
            )
        self.in_chans = in_chans
        self.out_channels = conv.out_channels
        n = 3 if isinstance(conv, nn.Conv3d) else 2
        self.kernel_size = _ntuple(conv.kernel_size, n)
        self.stride = _ntuple(conv.stride, n)
        self.padding = _ntuple(conv.padding, n)
        self.dilation = _ntuple(conv.dilation, n)
        self._conv = F.conv3d if n == 3 else F.conv2d
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.weight = nn.Parameter(fold_stem_weight(conv.weight, mean, std, in_chans))
        self.offset = nn.Parameter(offset_weight(conv.weight, mean, std))
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())
        self._cache: dict[tuple, torch.Tensor] = {}

    def bias_map(
        self,
        in_shape: Sequence[int],
        valid_shape: Sequence[int] | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | None = None,
    ) -> torch.Tensor:
        """The data-independent output term ``(1, C_out, *out_grid)`` for an input grid.

        ``valid_shape``: the extent of real voxels when the caller has zero-padded the input
        at the far end (Swin's patch embedding); defaults to ``in_shape``.
        """
        valid = tuple(in_shape) if valid_shape is None else tuple(valid_shape)
        off = self.offset
        dtype = dtype or off.dtype
        device = torch.device(device or off.device)
        # in the parameters' dtype, outside any autocast region (whose matmul casts would
        # mix bf16/fp16 with float32 operands), then cast once to the activation dtype
        no_autocast = (
            torch.autocast(device.type, enabled=False)
            if torch.amp.is_autocast_available(device.type)  # not "meta" (model table)
            else contextlib.nullcontext()
        )
        with no_autocast:
            ind = [
                _indicator(n, v, k, s, p, d, device, off.dtype)
                for n, v, k, s, p, d in zip(
                    in_shape, valid, self.kernel_size, self.stride, self.padding, self.dilation
                )
            ]
            o = off.to(device)[:, 0]  # (C, *k)
            for axis in range(len(ind) - 1, -1, -1):  # contract one kernel axis at a time
                o = torch.tensordot(o, ind[axis], dims=([1 + axis], [1])).movedim(-1, 1 + axis)
            if self.bias is not None:
                o = o + self.bias.to(device).view(-1, *([1] * len(ind)))
        return o.unsqueeze(0).to(dtype)

    def _cached_bias_map(self, x: torch.Tensor, valid_shape, dtype: torch.dtype) -> torch.Tensor:
        """The bias map for input ``x`` in ``dtype`` (the convolution output's: under
        autocast that is bf16/fp16 while ``x`` is float32)."""
        if torch.is_grad_enabled() and (
            self.offset.requires_grad or (self.bias is not None and self.bias.requires_grad)
        ):
            return self.bias_map(x.shape[2:], valid_shape, dtype=dtype, device=x.device)
        key = (
            tuple(x.shape[2:]),
            None if valid_shape is None else tuple(valid_shape),
            dtype,
            x.device,
            self.offset._version,
            self.offset.data_ptr(),
            None if self.bias is None else (self.bias._version, self.bias.data_ptr()),
        )
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) > 16:
                self._cache.clear()
            with torch.no_grad():
                hit = self.bias_map(x.shape[2:], valid_shape, dtype=dtype, device=x.device)
            self._cache[key] = hit
        return hit

    def forward(self, x: torch.Tensor, valid_shape: Sequence[int] | None = None) -> torch.Tensor:
        unpadded = not any(self.padding) and (
            valid_shape is None or tuple(valid_shape) == tuple(x.shape[2:])
        )
        if unpadded:  # no kernel tap ever meets padding: the map is one constant per channel
            const = self.offset.flatten(1).sum(1)
            if self.bias is not None:
                const = const + self.bias
            return self._conv(x, self.weight, const, self.stride, 0, self.dilation)
        y = self._conv(x, self.weight, None, self.stride, self.padding, self.dilation)
        bias_map = self._cached_bias_map(x, valid_shape, y.dtype)
        # one contiguous pass; adding only the border slabs was measured slower (strided)
        if y.requires_grad or bias_map.requires_grad:
            return y + bias_map
        return y.add_(bias_map)

    def extra_repr(self) -> str:
        return (
            f"{self.in_chans}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, folded mean={self.mean}, std={self.std}"
        )

    def _apply(self, fn, recurse=True):  # device/dtype moves invalidate the bias-map cache
        self._cache.clear()
        return super()._apply(fn, recurse)


def resample_pos_embed_1d(pos: torch.Tensor, new_len: int) -> torch.Tensor:
    """Linearly resample ``(L, C)`` position embeddings to ``(new_len, C)`` (identity if equal)."""
    if pos.shape[0] == new_len:
        return pos
    out = F.interpolate(
        pos.detach().float().t().unsqueeze(0), size=new_len, mode="linear", align_corners=False
    )
    return out[0].t().to(pos.dtype)


def resample_pos_embed_2d(
    pos: torch.Tensor, old_hw: Sequence[int], new_hw: Sequence[int]
) -> torch.Tensor:
    """Bicubically resample ``(H*W, C)`` spatial embeddings to ``new_hw`` (identity if equal)."""
    old_hw, new_hw = tuple(old_hw), tuple(new_hw)
    if old_hw == new_hw:
        return pos
    c = pos.shape[-1]
    grid = pos.detach().float().reshape(1, old_hw[0], old_hw[1], c).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new_hw, mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(new_hw[0] * new_hw[1], c).to(pos.dtype)
