"""The ``ct3dzoo`` command line (also ``python -m ct3dzoo``).

ct3dzoo list [PATTERN] [--pretrained]       architectures (or arch.tag weights)
ct3dzoo info ARCH[.TAG]                      the weights cfg, readable
ct3dzoo fetch ARCH.TAG [--from FILE]         fill the weights cache (network or file)
ct3dzoo export ARCH.TAG OUT_DIR [--in-chans N] [--from FILE]
                                             a Hub-ready folder of adapted weights
ct3dzoo finetune ... / ct3dzoo demo ...      (when those modules are installed)
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["build_parser", "main"]

#: subcommands owned by other modules: (module, add_parser function, run function)
_PLUGINS = {
    "finetune": ("ct3dzoo.train.cli", "add_finetune_parser", "run_finetune"),
    "demo": ("ct3dzoo.demo", "add_demo_parser", "run_demo"),
}


def _cmd_list(args: argparse.Namespace) -> int:
    from ._registry import list_models, list_pretrained

    if args.pretrained:
        pat = args.pattern
        names = sorted(set(list_pretrained(pat)) | set(list_pretrained(pat + ".*")))
    else:
        names = list_models(args.pattern)
    if not names:
        print(
            f"no {'weights' if args.pretrained else 'architectures'} match {args.pattern!r}",
            file=sys.stderr,
        )
        return 1
    print("\n".join(names))
    return 0


def _fmt_value(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return ", ".join(_fmt_value(x) for x in v) if v else "-"
    return "-" if v is None else str(v)


def _cmd_info(args: argparse.Namespace) -> int:
    from ._registry import get_arch, get_pretrained_cfg, list_pretrained, split_name
    from ._weights import _cached_entry, cache_paths

    arch, _ = split_name(args.name)
    spec = get_arch(arch)
    tags = [k.partition(".")[2] for k in list_pretrained(f"{arch}.*")]
    print(f"{'architecture':<13} {arch} (family {spec.family})")
    print(
        f"{'weights tags':<13} {', '.join(tags) or '-'}"
        + (f" (default {spec.default_tag})" if spec.default_tag else "")
    )
    if not tags:
        return 0
    cfg = get_pretrained_cfg(args.name)
    name = f"{cfg['arch']}.{cfg['tag']}"
    print(f"\n[{name}]")
    width = max(len(k) for k in cfg)
    for k, v in cfg.items():
        if k in ("arch", "tag"):
            continue
        print(f"{k:<{width}} {_fmt_value(v)}")
    hit = _cached_entry(name)
    where = str(hit) if hit else f"not cached (would be {cache_paths(name).weights})"
    print(f"{'cached':<{width}} {where}")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from ._weights import fetch

    path = fetch(args.name, from_file=args.from_file, progress=not args.no_progress)
    print(path)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ._builder import load
    from ._registry import get_pretrained_cfg
    from ._weights import fetch

    cfg = get_pretrained_cfg(args.name)
    name = f"{cfg['arch']}.{cfg['tag']}"
    if args.from_file is not None:  # verify against the known hashes and cache it
        fetch(name, from_file=args.from_file, progress=not args.no_progress)
    model = load(
        cfg["arch"],
        pretrain=cfg["tag"],
        num_classes=0,
        in_chans=args.in_chans,
        progress=not args.no_progress,
    )
    out = model.save_pretrained(args.out_dir)
    n = sum(p.numel() for p in model.state_dict().values())
    print(f"exported {name} (in_chans={args.in_chans}, {n:,} values) to {out}:")
    for f in ("config.json", "model.safetensors", "README.md"):
        print(f"  {out / f}")
    print(f"upload with: hf upload ORG/NAME {out}   then load with ct3dzoo.load('hf-hub:ORG/NAME')")
    return 0


def _add_plugin(
    sub: Any, command: str, handlers: dict[str, Callable[[argparse.Namespace], int]]
) -> None:
    """Register a subcommand another module owns; a missing module just leaves it out."""
    module_name, add_name, run_name = _PLUGINS[command]
    try:
        module = importlib.import_module(module_name)
        add, run = getattr(module, add_name), getattr(module, run_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            return  # not installed / not written yet
        err = f"{type(e).__name__}: {e}"
    except (ImportError, AttributeError) as e:
        err = f"{type(e).__name__}: {e}"
    else:
        add(sub)
        handlers[command] = run
        return
    p = sub.add_parser(command, help=f"(unavailable: {module_name} failed to import)")
    p.add_argument("rest", nargs=argparse.REMAINDER)

    def broken(args: argparse.Namespace, _err: str = err) -> int:
        print(f"ct3dzoo {command}: {module_name} could not be imported: {_err}", file=sys.stderr)
        return 1

    handlers[command] = broken


def build_parser() -> tuple[
    argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], int]]
]:
    """The argument parser and ``{command: handler}``."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="ct3dzoo", description="Video-pretrained 3D networks adapted to single-channel CT."
    )
    parser.add_argument("--version", action="version", version=f"ct3dzoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {}

    p = sub.add_parser("list", help="list architectures, or arch.tag weights with --pretrained")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'x3d*'")
    p.add_argument("--pretrained", action="store_true", help="list arch.tag weights instead")
    handlers["list"] = _cmd_list

    p = sub.add_parser("info", help="show an architecture's weights cfg")
    p.add_argument("name", metavar="ARCH[.TAG]")
    handlers["info"] = _cmd_info

    p = sub.add_parser("fetch", help="download (or read --from) weights into the cache")
    p.add_argument("name", metavar="ARCH.TAG")
    p.add_argument(
        "--from", dest="from_file", metavar="FILE", help="an already downloaded upstream file"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    handlers["fetch"] = _cmd_fetch

    p = sub.add_parser("export", help="write a Hub-ready folder of adapted weights")
    p.add_argument("name", metavar="ARCH.TAG")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--in-chans", type=int, default=1, help="input channels (default 1)")
    p.add_argument(
        "--from", dest="from_file", metavar="FILE", help="an already downloaded upstream file"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    handlers["export"] = _cmd_export

    for command in _PLUGINS:
        _add_plugin(sub, command, handlers)
    return parser, handlers


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status (0 ok, 1 error, 2 usage)."""
    import warnings

    # pytorchvideo's import-time torch.jit.script calls warn on every run; not the user's business
    warnings.filterwarnings(
        "ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning
    )
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(handlers[args.command](args) or 0)
    except (ValueError, RuntimeError, OSError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"ct3dzoo {args.command}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
