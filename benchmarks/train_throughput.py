"""Training throughput and memory: fp32 eager vs bf16 + channels_last (+ torch.compile).

For each arch, at 1 x 32 x 224 x 224 (the paper's input) with random init:
  1. volumes/s and peak GPU memory of full training steps (forward, backward, AdamW) in
     fp32 eager, bf16 autocast + channels_last_3d, and the same under torch.compile; ratios
     against the fp32 run measured in the same process;
  2. the largest slice count D (at 224 x 224, batch 1, bf16) that trains without and with
     gradient checkpointing, and their ratio.
Goals (issue 6): >= 2x throughput for bf16 over fp32; >= 2x slices with checkpointing.

CUDA only: on a machine without a GPU it prints a note and exits 0.

    python benchmarks/train_throughput.py [--archs r3d_18 x3d_m swin3d_t] [--batch-size 2]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable

import torch


def _step_fn(model: torch.nn.Module, *, bf16: bool, channels_last: bool) -> Callable[[], None]:
    from ct3dzoo.train.inference import _autocast, _to_device

    device = torch.device("cuda")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    dtype = torch.bfloat16 if bf16 else None
    state: dict[str, torch.Tensor] = {}

    def step() -> None:
        x = _to_device(state["x"], device, channels_last)
        with _autocast(device, dtype):
            logits = model(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits.float(), torch.zeros_like(logits, dtype=torch.float32)
        )
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step.state = state  # type: ignore[attr-defined]
    return step


def _build(arch: str, *, channels_last: bool, num_slices: int = 32) -> torch.nn.Module:
    import ct3dzoo

    model = ct3dzoo.load(arch, None, num_classes=1, num_slices=num_slices, image_size=224)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    return model.to("cuda", memory_format=fmt).train()


def throughput(
    arch: str, mode: str, *, batch_size: int, steps: int, warmup: int
) -> tuple[float, float]:
    """(volumes/s, peak GiB) of training steps in ``mode``: fp32, bf16_cl or bf16_cl_compile."""
    bf16 = mode != "fp32"
    cl = mode != "fp32"
    torch.cuda.empty_cache()
    model = _build(arch, channels_last=cl)
    fwd = torch.compile(model) if mode.endswith("compile") else model
    step = _step_fn(fwd, bf16=bf16, channels_last=cl)
    step.state["x"] = torch.rand(batch_size, 1, 32, 224, 224, device="cuda")  # type: ignore[attr-defined]
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30
    del model, fwd, step
    return batch_size * steps / dt, peak


def _fits(arch: str, slices: int, *, checkpointing: bool) -> bool:
    """Whether two bf16 training steps at 1 x 1 x slices x 224 x 224 fit in GPU memory."""
    try:
        model = _build(arch, channels_last=True, num_slices=slices)
        model.set_grad_checkpointing(checkpointing)
        step = _step_fn(model, bf16=True, channels_last=True)
        step.state["x"] = torch.rand(1, 1, slices, 224, 224, device="cuda")  # type: ignore[attr-defined]
        step()
        step()
        torch.cuda.synchronize()
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        torch.cuda.empty_cache()


def max_slices(arch: str, *, checkpointing: bool, unit: int = 16, cap: int = 4096) -> int:
    """Largest multiple of ``unit`` slices (<= cap) for which two training steps fit."""
    lo, hi = 0, unit
    while hi <= cap and _fits(arch, hi, checkpointing=checkpointing):
        lo, hi = hi, hi * 2
    hi = min(hi, cap + unit)
    while hi - lo > unit:  # lo fits, hi does not
        mid = (lo + hi) // 2 // unit * unit
        lo, hi = (mid, hi) if _fits(arch, mid, checkpointing=checkpointing) else (lo, mid)
    return lo


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=["r3d_18", "x3d_m", "swin3d_t"])
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--no-slices", action="store_true", help="skip the max-slices search")
    args = p.parse_args(argv)

    print(f"# train_throughput  python {platform.python_version()}  torch {torch.__version__}")
    if not torch.cuda.is_available():
        print("note: no CUDA GPU here; this benchmark measures GPU training and is skipped.")
        return 0
    print(f"# GPU: {torch.cuda.get_device_name()}  bf16: {torch.cuda.is_bf16_supported()}")
    modes = ["fp32", "bf16_cl"] + ([] if args.no_compile else ["bf16_cl_compile"])
    print(f"\n## Training steps at {args.batch_size} x 1 x 32 x 224 x 224 (random init)\n")
    print("| arch | mode | volumes/s | peak GiB | speed vs fp32 | memory vs fp32 |")
    print("|---|---|---:|---:|---:|---:|")
    for arch in args.archs:
        base: tuple[float, float] | None = None
        for mode in modes:
            try:
                vps, peak = throughput(
                    arch, mode, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup
                )
            except Exception as e:  # report and go on (e.g. a compile failure)
                print(f"| {arch} | {mode} | failed: {type(e).__name__}: {str(e)[:60]} | | | |")
                continue
            base = base or (vps, peak)
            print(
                f"| {arch} | {mode} | {vps:.2f} | {peak:.2f} | "
                f"{vps / base[0]:.2f}x | {peak / base[1]:.2f}x |"
            )
            sys.stdout.flush()
    if not args.no_slices:
        print("\n## Largest slice count D that trains (1 x 1 x D x 224 x 224, bf16)\n")
        print("| arch | without checkpointing | with checkpointing | ratio |")
        print("|---|---:|---:|---:|")
        for arch in args.archs:
            plain = max_slices(arch, checkpointing=False)
            ckpt = max_slices(arch, checkpointing=True)
            print(f"| {arch} | {plain} | {ckpt} | {ckpt / max(plain, 1):.2f}x |")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
