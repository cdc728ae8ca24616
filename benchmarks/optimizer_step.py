"""AdamW step time: fused vs foreach vs the per-tensor loop, on the machine's CPU (or CUDA).

For each arch (random init, gradients filled with noise) times ``optimizer.step()`` of
``torch.optim.AdamW`` in its three implementations, in the same process, and prints the
ratio of each to the per-tensor loop (torch's default on CPU). ``finetune()`` uses the fused
one where torch has it (`ct3dzoo.train.optim.build_optimizer`).

    python benchmarks/optimizer_step.py [--archs medicalnet_resnet10 r3d_18] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

import ct3dzoo


def step_ms(params: list[torch.nn.Parameter], repeats: int, **kw: bool) -> float:
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, **kw)
    for _ in range(2):
        opt.step()
    times = []
    for _ in range(repeats):
        if params[0].is_cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        opt.step()
        if params[0].is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archs", nargs="+", default=["medicalnet_resnet10", "r3d_18", "resnet18_2d"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), device {args.device}\n"
    )
    print("| arch | parameters | per-tensor ms | foreach ms | fused ms | fused vs per-tensor |")
    print("|---|---:|---:|---:|---:|---:|")
    for arch in args.archs:
        model = ct3dzoo.create_model(arch, num_classes=1).to(args.device)
        params = [q for q in model.parameters() if q.requires_grad]
        for q in params:
            q.grad = torch.randn_like(q)
        loop = step_ms(params, args.repeats, foreach=False)
        foreach = step_ms(params, args.repeats, foreach=True)
        fused = step_ms(params, args.repeats, fused=True)
        n = sum(q.numel() for q in params) / 1e6
        print(
            f"| {arch} | {n:.1f} M | {loop:.1f} | {foreach:.1f} | {fused:.1f} | "
            f"{loop / fused:.1f}x |"
        )


if __name__ == "__main__":
    main()
