"""One vocabulary: every command and public function spells a concept one way (shape,
spacing, windows, num_slices, stride, reduce, device, batch_size); old spellings survive only
as aliases that warn."""

from __future__ import annotations

import argparse
import inspect
import warnings

import pytest

import ct3dzoo
from ct3dzoo import cli
from ct3dzoo._cli_args import CONCEPTS, DeprecatedFlag

#: (function, old keyword) pairs kept for one release; each must warn when used
DEPRECATED_KEYWORDS = {
    ("predict_study", "window"),
    ("study_saliency", "window"),
    ("demo", "size"),
    ("demo", "window"),
    ("prepare", "size"),
}


def _command_parsers() -> dict[str, argparse.ArgumentParser]:
    parsers = {}
    for name in ("list", "info", "fetch", "export", *cli._PLUGINS):
        root, _ = cli.build_parser(name)  # the real parser of that command
        sub = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
        parsers[name] = sub.choices[name]
    return parsers


def _old_spelling(name: str) -> str | None:
    key = name.lstrip("-").replace("-", "_")
    return next((c for c, olds in CONCEPTS.items() if key in olds), None)


def test_every_command_spells_each_concept_one_way() -> None:
    bad, deprecated = [], []
    for cmd, parser in _command_parsers().items():
        for action in parser._actions:
            for opt in action.option_strings:
                canonical = _old_spelling(opt)
                if canonical is None:
                    continue
                if isinstance(action, DeprecatedFlag):
                    deprecated.append(f"{cmd} {opt}")
                else:
                    bad.append(f"ct3dzoo {cmd} {opt} (say --{canonical.replace('_', '-')})")
    assert bad == []
    assert "predict --size" in deprecated and "explain --slices" in deprecated


def test_commands_that_take_a_model_take_every_reference_and_a_device() -> None:
    parsers = _command_parsers()
    for cmd in ("predict", "explain", "finetune"):
        opts = {o for a in parsers[cmd]._actions for o in a.option_strings}
        dests = {a.dest for a in parsers[cmd]._actions}
        assert "model" in dests and "--device" in opts, cmd
        if cmd != "finetune":
            assert {"--windows", "--shape", "--spacing", "--num-slices", "--stride",
                    "--reduce", "--batch-size"} <= opts, cmd  # fmt: skip


def _public_functions() -> dict[str, object]:
    from ct3dzoo import data, demo, explain

    return {
        "predict_study": ct3dzoo.predict_study,
        "predict": ct3dzoo.predict,
        "finetune": ct3dzoo.finetune,
        "study_saliency": explain.study_saliency,
        "CTDataset": data.CTDataset,
        "prepare": data.prepare,
        "slice_windows": data.slice_windows,
        "resample": data.resample,
        "transforms_for": data.transforms_for,
        "resolve_preprocessing": data.resolve_preprocessing,
        "demo": demo.demo,
    }


def test_public_signatures_spell_each_concept_one_way() -> None:
    # load()/create_model() take num_slices/image_size as model geometry (timm's names for
    # size-dependent architectures): model options, not preprocessing, so not checked here
    bad = []
    for fname, fn in _public_functions().items():
        for pname in inspect.signature(fn).parameters:
            canonical = _old_spelling(pname)
            if canonical and (fname, pname) not in DEPRECATED_KEYWORDS:
                bad.append(f"{fname}({pname}=) -> {canonical}=")
    assert bad == []


@pytest.mark.parametrize("fname, old", sorted(DEPRECATED_KEYWORDS))
def test_each_deprecated_keyword_warns(fname: str, old: str) -> None:
    fn = _public_functions()[fname]
    assert old in inspect.signature(fn).parameters
    src = inspect.getsource(fn)
    assert f'deprecated_alias("{old}"' in src, f"{fname}({old}=) must warn via deprecated_alias"


def test_deprecated_alias_warns_and_refuses_both() -> None:
    from ct3dzoo._cli_args import deprecated_alias

    with pytest.warns(FutureWarning, match="window= is deprecated.*use num_slices="):
        assert deprecated_alias("window", "num_slices", 16, None) == 16
    with pytest.raises(TypeError, match="pass only num_slices="):
        deprecated_alias("window", "num_slices", 16, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert deprecated_alias("window", "num_slices", None, 8) == 8
