"""The ``ct3dzoo`` command line (also ``python -m ct3dzoo``).

ct3dzoo list [PATTERN] [--pretrained]       architectures (or arch.tag weights)
ct3dzoo info ARCH[.TAG]                      the weights spec and its input contract
ct3dzoo fetch ARCH.TAG [--from FILE]         fill the weights cache (network or file)
ct3dzoo export ARCH.TAG OUT_DIR [--in-chans N] [--from FILE]
                                             a Hub-ready folder of adapted weights
ct3dzoo finetune | demo | explain | ...     (subcommands owned by other modules)

``--help``, ``list`` and ``info`` never import torch: they read ``catalog.json``, a snapshot
of the registry (``python -m ct3dzoo._catalog_build`` rewrites it). A subcommand owned by
another module is imported only when it is the one being run.
"""

from __future__ import annotations

import argparse
import difflib
import fnmatch
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._io.cache import cache_paths, cached_entry
from ._specs import ModelOptions, WeightsSpec
from ._version import __version__

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]

#: subcommands owned by other modules: (module, add_parser function, run function, help)
_PLUGINS = {
    "finetune": ("ct3dzoo.train.cli", "add_finetune_parser", "run_finetune",
                 "fine-tune a model on a manifest of CT studies"),
    "demo": ("ct3dzoo.demo", "add_demo_parser", "run_demo",
             "end-to-end demo on a synthetic chest-CT phantom (offline)"),
    "prepare": ("ct3dzoo.data.prepare_cli", "add_prepare_parser", "run_prepare",
                "read a manifest's studies once into a compact cache (resumable, sharded)"),
    "predict": ("ct3dzoo.train.study_cli", "add_predict_parser", "run_predict",
                "whole-study prediction over slice windows; writes a CSV"),
    "explain": ("ct3dzoo.explain.cli", "add_explain_parser", "run_explain",
                "Grad-CAM saliency over a CT study: montage + per-slice curve (PNG)"),
}  # fmt: skip


def _catalog() -> dict[str, Any]:
    return json.loads(Path(__file__).with_name("catalog.json").read_text())


def _nearest(name: str, names: Sequence[str]) -> str:
    return ", ".join(difflib.get_close_matches(name, list(names), n=3, cutoff=0.0))


def _cmd_list(args: argparse.Namespace) -> int:
    cat = _catalog()
    pat = args.pattern
    if args.pretrained:
        names = sorted(
            n
            for n in cat["weights"]
            if fnmatch.fnmatchcase(n, pat) or fnmatch.fnmatchcase(n, pat + ".*")
        )
    else:
        names = sorted(n for n in cat["archs"] if fnmatch.fnmatchcase(n, pat))
    if not names:
        what = "weights" if args.pretrained else "architectures"
        print(f"no {what} match {pat!r}", file=sys.stderr)
        return 1
    print("\n".join(names))
    return 0


def _fmt_value(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return ", ".join(_fmt_value(x) for x in v) if v else "-"
    return "-" if v is None else str(v)


def _cmd_info(args: argparse.Namespace) -> int:
    cat = _catalog()
    arch, _, tag = args.name.partition(".")
    a = cat["archs"].get(arch)
    if a is None:
        raise ValueError(
            f"unknown architecture {arch!r}; nearest: {_nearest(arch, cat['archs'])}. "
            "`ct3dzoo list` lists them all."
        )
    tags = sorted(w["tag"] for w in cat["weights"].values() if w["arch"] == arch)
    print(f"{'architecture':<13} {arch} (family {a['family']})")
    print(
        f"{'weights tags':<13} {', '.join(tags) or '-'}"
        + (f" (default {a['default_tag']})" if a["default_tag"] else "")
    )
    if not tags:
        return 0
    tag = a["default_tag"] if not tag or tag in a["aliases"] else tag
    row = cat["weights"].get(f"{arch}.{tag}")
    if row is None:
        raise ValueError(
            f"unknown weights {args.name!r}; nearest: "
            f"{_nearest(f'{arch}.{tag}', [f'{arch}.{t}' for t in tags])}"
        )
    spec = WeightsSpec.from_dict(row)
    print(f"\n[{spec.name}]")
    fields = {k: v for k, v in row.items() if k not in ("arch", "tag", "input_contract")}
    width = max(len(k) for k in (*fields, "input contract"))
    for k, v in fields.items():
        print(f"{k:<{width}} {_fmt_value(v)}")
    print(f"{'input contract':<{width}} {spec.input_contract.describe()}")
    hit = cached_entry(spec.name)
    where = str(hit) if hit else f"not cached (would be {cache_paths(spec.name).weights})"
    print(f"{'cached':<{width}} {where}")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from ._factory import fetch  # torch: only for the command that needs it

    print(fetch(args.name, from_file=args.from_file, progress=not args.no_progress))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ._factory import fetch, load
    from ._registry import get_pretrained_cfg

    spec = get_pretrained_cfg(args.name)
    if args.from_file is not None:  # verify against the known hashes and cache it
        fetch(spec.name, from_file=args.from_file, progress=not args.no_progress)
    model = load(
        spec.arch,
        pretrain=spec.tag,
        num_classes=0,
        in_chans=args.in_chans,
        progress=not args.no_progress,
    )
    out = model.save_pretrained(args.out_dir)
    n = sum(p.numel() for p in model.state_dict().values())
    print(f"exported {spec.name} (in_chans={args.in_chans}, {n:,} values) to {out}:")
    for f in ("config.json", "model.safetensors", "README.md"):
        print(f"  {out / f}")
    print(f"upload with: hf upload ORG/NAME {out}   then load with ct3dzoo.load('hf-hub:ORG/NAME')")
    return 0


def _add_plugin(sub: Any, command: str, handlers: dict[str, Handler]) -> None:
    """Register a subcommand another module owns; a missing module just leaves it out."""
    module_name, add_name, run_name, _ = _PLUGINS[command]
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


def build_parser(command: str | None = None) -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    """The argument parser and ``{command: handler}``.

    Subcommands owned by other modules are imported (and get their full parser) only when
    ``command`` names them; otherwise they are listed with their one-line help.
    """
    parser = argparse.ArgumentParser(
        prog="ct3dzoo", description="Video-pretrained 3D networks adapted to single-channel CT."
    )
    parser.add_argument("--version", action="version", version=f"ct3dzoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    handlers: dict[str, Handler] = {}

    p = sub.add_parser("list", help="list architectures, or arch.tag weights with --pretrained")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'x3d*'")
    p.add_argument("--pretrained", action="store_true", help="list arch.tag weights instead")
    handlers["list"] = _cmd_list

    p = sub.add_parser("info", help="show an architecture's weights spec and input contract")
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
    p.add_argument("--in-chans", **ModelOptions.cli_kwargs("in_chans"))
    p.add_argument(
        "--from", dest="from_file", metavar="FILE", help="an already downloaded upstream file"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    handlers["export"] = _cmd_export

    for name, (*_, help_text) in _PLUGINS.items():
        if name == command:
            _add_plugin(sub, name, handlers)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser, handlers


def _command_of(argv: Sequence[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status (0 ok, 1 error, 2 usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, handlers = build_parser(_command_of(argv))
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
