"""The ``ct3dzoo`` command line (also ``python -m ct3dzoo``).

ct3dzoo list [PATTERN] [--pretrained]       architectures (or arch.tag weights)
ct3dzoo info ARCH[.TAG]                      the weights spec and its input contract
ct3dzoo fetch ARCH.TAG [--from FILE]         fill the weights cache (network or file)
ct3dzoo export ARCH.TAG OUT_DIR [--in-chans N] [--from FILE]
                                             a Hub-ready folder of adapted weights
ct3dzoo finetune | demo | explain | ...     (subcommands owned by other modules)

A user error (a bad file or option) prints one line ``ct3dzoo COMMAND: error: MESSAGE`` and
exits 1; ``ct3dzoo --debug COMMAND ...`` shows the traceback instead. Outputs that are inputs
(``predict ... m.csv --out m.csv``), impossible ``--device`` values and non-positive counts
are refused before a command starts.

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
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._cli_args import is_path_reference
from ._io.cache import cache_paths, cached_entry
from ._io.paths import check_outputs
from ._specs import ModelOptions, WeightsSpec
from ._version import __version__
from .errors import CT3DZooError

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
                "saliency over a CT study: NIfTI on its grid, montage, per-slice curve"),
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
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
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


#: per command: (output option -> (argparse dest, names written inside a folder output),
#: input option -> argparse dest); checked before the command runs
_OUTPUTS: dict[str, tuple[dict[str, tuple[str, tuple[str, ...]]], dict[str, str]]] = {
    "predict": ({"--out": ("out", ())}, {"MODEL": "model", "STUDY": "studies"}),
    "explain": (
        {"--out": ("out", ("saliency_montage.png", "slice_scores.png", "saliency.json"))},
        {"MODEL": "model", "STUDY": "study"},
    ),
    "finetune": (
        {"--out": ("out_dir", ("last", "best", "final", "log.jsonl"))},
        {"TRAIN": "train", "--val": "val", "--model": "model", "--pretrain": "pretrain"},
    ),
    "export": (
        {"OUT_DIR": ("out_dir", ("config.json", "model.safetensors", "README.md"))},
        {"--from": "from_file"},
    ),
}


def _manifest_paths(paths: Any) -> list[str]:
    """The study paths of a single CSV manifest (``predict``), so ``--out`` cannot be one."""
    if not (isinstance(paths, list) and len(paths) == 1 and paths[0].lower().endswith(".csv")):
        return []
    from .data.prepare_cli import study_paths  # torch: only for the commands that read data

    return study_paths(paths[0])


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse an output path that is one of the command's inputs, before anything runs."""
    outs, ins = _OUTPUTS.get(args.command, ({}, {}))
    inputs: dict[str, Any] = {}
    for opt, dest in ins.items():
        v = getattr(args, dest, None)
        if isinstance(v, str) and v.startswith(("local-dir:", "hf-hub:")):
            v = v.partition(":")[2] if v.startswith("local-dir:") else None
        inputs[opt] = v
    if "STUDY" in inputs:
        inputs["a study of the manifest"] = _manifest_paths(inputs["STUDY"])
    outputs = {opt: getattr(args, dest, None) for opt, (dest, _) in outs.items()}
    check_outputs(outputs, inputs, writes={opt: names for opt, (_, names) in outs.items()})


#: per command: options (argparse dests: old spellings too) > 0, and >= 0 (--shape 0: keep)
_POSITIVE = {
    "predict": ("num_slices", "stride", "batch_size", "spacing", "num_classes"),
    "explain": ("num_slices", "stride", "batch_size", "spacing", "num_classes"),
    "demo": ("cases", "epochs", "batch_size", "shape", "phantom_shape", "lr"),
}
_NON_NEGATIVE = {"predict": ("shape",), "explain": ("target", "shape")}
#: per command: the (argparse dest, flag) naming an architecture, checked by _check_arch
_ARCH_OPTIONS = {"demo": ("arch", "--arch"), "finetune": ("model", "--model")}


def _check_numbers(args: argparse.Namespace) -> None:
    """Counts, sizes and spacings of the commands that do not check their own."""
    for dests, strict in ((_POSITIVE, True), (_NON_NEGATIVE, False)):
        for dest in dests.get(args.command, ()):
            value = getattr(args, dest, None)
            values = value if isinstance(value, (list, tuple)) else [value]
            # NaN compares False both ways, so it is refused too
            if any(v is not None and not (v > 0 if strict else v >= 0) for v in values):
                need = "positive (> 0)" if strict else ">= 0"
                flag = "--" + dest.replace("_", "-")
                raise ValueError(f"{flag} must be {need}; got {_fmt_value(value)}")


def _check_arch(args: argparse.Namespace) -> None:
    """demo's ``--arch``, finetune's ``--model`` (unless a saved model): a known architecture
    (from the catalog: no torch), before data is written."""
    dest, flag = _ARCH_OPTIONS.get(args.command, ("", ""))
    name = str(getattr(args, dest, None) or "") if dest else ""
    archs = _catalog()["archs"] if name and not is_path_reference(name) else {}
    if archs and name.partition(".")[0] not in archs:
        raise ValueError(
            f"{flag} {name}: unknown architecture; nearest: "
            f"{_nearest(name.partition('.')[0], archs)}. `ct3dzoo list` lists them all."
        )


def _check_device(args: argparse.Namespace) -> None:
    """``--device``: a device this machine has (``cpu``, ``cuda[:N]``, ``mps``)."""
    name = getattr(args, "device", None)
    if name is None:
        return
    import torch  # only commands with a --device get here, and they run torch

    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(
            f"--device {name!r} is not a device; use cpu, cuda, cuda:N or mps (or leave "
            "--device out: cuda when available, else cpu)"
        ) from None
    if dev.type == "cpu" and dev.index not in (None, 0):
        raise ValueError(f"--device {name}: the CPU has no numbered devices; use --device cpu")
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            why = "torch was built without CUDA" if torch.version.cuda is None else "no GPU"
            raise ValueError(
                f"--device {name}: CUDA is not available here ({why}); use --device cpu"
            )
        if dev.index is not None and dev.index >= n:
            raise ValueError(
                f"--device {name}: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: ct3dzoo runs on cpu, cuda[:N] or mps")


def _is_user_error(e: BaseException) -> bool:
    """Errors a user's input causes (bad file, bad option): one line, no traceback."""
    if isinstance(e, (CT3DZooError, ValueError, TypeError, OSError, RuntimeError, KeyError)):
        return True
    return type(e).__name__ == "SafetensorError"  # safetensors' own, raised from Rust


def _one_line(e: BaseException) -> str:
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    if isinstance(e, OSError) and e.filename and str(e.filename) not in msg:
        msg = f"{msg}: {e.filename}"
    return msg or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status (0 ok, 1 error, 2 usage).

    A user error (bad file, bad option, ct3dzoo's own errors) prints one line
    ``ct3dzoo COMMAND: error: MESSAGE`` and returns 1; ``--debug`` re-raises it instead.
    """
    if argv is None:  # an old flag's one `ct3dzoo: warning:` line, not Python's 2 lines too
        warnings.filterwarnings("ignore", r"--\S+ is deprecated", FutureWarning)
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]  # accepted anywhere, also after the command
    parser, handlers = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        _check_numbers(args)
        _check_arch(args)
        _check_device(args)
        _check_outputs(args)
        return int(handlers[args.command](args) or 0)
    except SystemExit as e:  # a plugin's `raise SystemExit("message")`
        if debug or not isinstance(e.code, str):
            raise
        print(f"ct3dzoo {args.command}: error: {e.code}", file=sys.stderr)
        return 1
    except Exception as e:
        if debug or not _is_user_error(e):
            raise
        print(f"ct3dzoo {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
