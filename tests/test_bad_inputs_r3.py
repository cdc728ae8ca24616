"""Round-3 sweep of bad inputs (issue #21 point 7): saved models (local-dir:, hf-hub: over a
loopback Hub), corrupt checkpoints and configs, tasks, output paths, devices, counts and
sizes, window specs, manifests. Each asserts the message, not just the type.

Cases whose fix belongs in a module another person owns are ``xfail(strict=True)`` with the
owner in the reason: they start passing (and then fail as XPASS) once fixed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import ct3dzoo
from ct3dzoo._io.checkpoint import read_checkpoint, read_safetensors
from ct3dzoo._io.paths import check_outputs
from ct3dzoo.cli import main
from ct3dzoo.data import CTDataset, CTVolume, resolve_window
from ct3dzoo.errors import CorruptCheckpointError, OutputClobbersInputError
from ct3dzoo.train import predict
from ct3dzoo.train.metrics import check_task, probabilities
from ct3dzoo.train.study import predict_study

ARCH = "x3d_xs"  # the fastest arch to build


def _xfail(owner: str, why: str):
    return pytest.mark.xfail(strict=True, reason=f"needs a fix in {owner}: {why}")


@pytest.fixture(scope="module")
def d(tmp_path_factory) -> Path:
    """``model/`` (1 output), ``model3/`` (3 outputs), ``s1.npz`` (8x32x32 HU), ``m.csv``."""
    d = tmp_path_factory.mktemp("r3")
    torch.manual_seed(0)
    ct3dzoo.load(ARCH, pretrain=None, num_classes=1).save_pretrained(d / "model")
    ct3dzoo.load(ARCH, pretrain=None, num_classes=3).save_pretrained(d / "model3")
    hu = np.random.default_rng(0).uniform(-1000, 400, (8, 32, 32)).astype("float32")
    CTVolume(hu=hu, spacing=(2.0, 1.0, 1.0)).save_npz(str(d / "s1.npz"))
    (d / "m.csv").write_text("path,label\ns1.npz,1\n")
    return d


def _copy_model(src: Path, dst: Path, **replace: bytes) -> Path:
    dst.mkdir()
    for name in ("config.json", "model.safetensors"):
        (dst / name).write_bytes(replace.get(name.split(".")[0], (src / name).read_bytes()))
    return dst


def _config(d: Path, **model_config) -> bytes:
    cfg = json.loads((d / "model" / "config.json").read_text())
    cfg["model_config"].update(model_config)
    return json.dumps(cfg).encode()


def _cli(capsys, *argv: str) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    _, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, err.strip()


# ------------------------------------------------------- saved models (local-dir:), files
@pytest.mark.parametrize(
    ("make", "exc", "words"),
    [
        (lambda d, t: "", ValueError, ["needs a folder after the colon"]),
        (lambda d, t: str(t / "nope"), FileNotFoundError, ["is not a folder", "save_pretrained"]),
        (lambda d, t: str(d / "m.csv"), FileNotFoundError, ["is a file, not a folder"]),
        (lambda d, t: str(_copy_model(d / "model", t / "c", config=b"\xff\xfe\x00")),
         ValueError, ["config.json is not text"]),
        (lambda d, t: str(_copy_model(d / "model", t / "c", config=b"[1, 2]")),
         ValueError, ["config.json is not a ct3dzoo config.json", "not an object"]),
        (lambda d, t: str(_copy_model(d / "model", t / "c", config=_config(d, arch="x3d_xz"))),
         ValueError, ["config.json names an unknown architecture 'x3d_xz'", "nearest: x3d_xs"]),
        (lambda d, t: str(_copy_model(d / "model", t / "c", config=_config(d, num_classes="1"))),
         ValueError, ["model_config.num_classes='1'", "expected an integer"]),
        (lambda d, t: str(_copy_model(d / "model", t / "c", config=_config(d, in_chans=None))),
         ValueError, ["model_config.in_chans=None"]),
        (lambda d, t: str(_copy_model(
            d / "model", t / "c",
            config=json.dumps({**json.loads((d / "model/config.json").read_text()),
                               "format_version": 99}).encode())),
         ValueError, ["format 99", "upgrade ct3dzoo"]),
        (lambda d, t: str(_copy_model(d / "model", t / "c", model=b"\x00" * 7)),
         CorruptCheckpointError, ["model.safetensors is not a readable safetensors file",
                                  "7 bytes", "Re-save the model"]),
        (lambda d, t: str(_copy_model(d / "model", t / "c", model=(d / "model3" /
                                                                  "model.safetensors").read_bytes())),
         ValueError, ["model.safetensors does not match the model config.json describes",
                      "Re-save", "head.fc.weight: checkpoint (3, 2048) vs model (1, 2048)"]),
    ],
    ids=["empty", "missing", "file", "config-binary", "config-list", "config-arch",
         "config-num-classes-str", "config-in-chans-none", "format-99", "weights-7-bytes",
         "weights-of-3-classes"],
)  # fmt: skip
def test_local_dir_bad_folders(d, tmp_path, make, exc, words):
    with pytest.raises(exc) as e:
        ct3dzoo.load(f"local-dir:{make(d, tmp_path)}")
    assert all(w in str(e.value) for w in words), str(e.value)


def test_torch_checkpoint_truncated_names_the_file(tmp_path):
    torch.save({"w": torch.zeros(1000)}, tmp_path / "a.pth")
    data = (tmp_path / "a.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match=r"cut\.pth is a truncated or corrupt torch"):
        read_checkpoint(tmp_path / "cut.pth")
    with pytest.raises(CorruptCheckpointError, match=r"cut\.pth is a truncated"):
        ct3dzoo.load(ARCH, pretrain=str(tmp_path / "cut.pth"))


def test_safetensors_that_is_a_folder_or_a_torch_file(tmp_path):
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(IsADirectoryError, match=r"is a folder, not a \.safetensors weights file"):
        read_safetensors(tmp_path / "dir.safetensors")
    torch.save({"w": torch.zeros(3)}, tmp_path / "t.safetensors")  # a torch zip, misnamed
    with pytest.raises(CorruptCheckpointError, match="not a readable safetensors file"):
        read_safetensors(tmp_path / "t.safetensors", fix="Download it again")


def test_pretrain_folder_is_not_a_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"is not a file\. Pass an existing checkpoint"):
        ct3dzoo.load(ARCH, pretrain=str(tmp_path))


# ------------------------------------------------------------------ hf-hub: (loopback)
@pytest.mark.parametrize(
    ("broken", "words"),
    [
        ("model.safetensors", ["model.safetensors is not a readable safetensors file",
                               "from the Hugging Face cache", "re-download"]),
        ("config.json", ["config.json is not valid JSON", "Hugging Face cache"]),
    ],
)  # fmt: skip
def test_hf_hub_corrupt_files_say_how_to_redownload(
    d, http_server, hf_env, monkeypatch, broken, words
):
    files = {f: (d / "model" / f).read_bytes() for f in ("config.json", "model.safetensors")}
    files[broken] = files[broken][:100]
    http_server.serve_hf_repo("org/broken", files)
    monkeypatch.setenv("HF_ENDPOINT", http_server.base)
    with pytest.raises(ValueError) as e:
        ct3dzoo.load("hf-hub:org/broken", progress=False)
    assert "hf-hub:org/broken" in str(e.value)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_hf_hub_revision_given_twice():
    with pytest.raises(ValueError, match=r"revision given twice \('v1' and revision='v2'\)"):
        ct3dzoo.load("hf-hub:org/x@v1", revision="v2")


# ----------------------------------------------------------------------- names, sizes
@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: ct3dzoo.load("x3d_xz", pretrain=None), ["'x3d_xz'", "nearest: x3d_xs"]),
        (lambda: ct3dzoo.create_model("r3d18"), ["'r3d18'", "nearest: r3d_18"]),
        (lambda: ct3dzoo.load(ARCH, pretrain="kinetcs400"), ["nearest: x3d_xs.kinetics400"]),
        (lambda: ct3dzoo.load(ARCH, pretrain=None, num_slices=0), ["num_slices", "got 0"]),
        (lambda: ct3dzoo.load(ARCH, pretrain=None, image_size=(16,)), ["(H, W)", "(16,)"]),
        (lambda: ct3dzoo.load(ARCH, pretrain=None, image_size=(-16, 16)), ["(-16, 16)"]),
        (lambda: ct3dzoo.load(ARCH, pretrain=None, in_chans=0), ["in_chans must be >= 1"]),
        (lambda: ct3dzoo.load(ARCH, pretrain=None, num_classes=-1), ["num_classes must be >= 0"]),
    ],
    ids=["arch", "create-arch", "tag", "num-slices-0", "image-size-1", "image-size-neg",
         "in-chans-0", "num-classes-neg"],
)  # fmt: skip
def test_names_and_sizes(call, words):
    with pytest.raises(ValueError) as e:
        call()
    assert all(w in str(e.value) for w in words), str(e.value)


# ------------------------------------------------------------------------------ tasks
@pytest.mark.parametrize(
    ("task", "n", "words"),
    [
        ("multi-class", 3, ["unknown task 'multi-class'", "did you mean 'multiclass'?"]),
        ("Binary", 1, ["unknown task 'Binary'", "'binary'"]),
        (None, 1, ["unknown task None"]),
        ("multiclass", 1, ["a 1-output model cannot be multiclass; softmax of one logit"]),
        ("binary", 3, ["task='binary' for a model with 3 outputs", "multilabel"]),
    ],
)
def test_check_task(task, n, words):
    with pytest.raises(ValueError) as e:
        check_task(task, n)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_valid_tasks_pass_and_probabilities_check():
    assert check_task("multilabel", 1) == "multilabel" and check_task("multiclass", 2)
    with pytest.raises(ValueError, match="cannot be multiclass"):
        probabilities(torch.zeros(4, 1), "multiclass")
    p = probabilities(torch.zeros(4, 3), "multiclass")
    assert torch.allclose(p, torch.full((4, 3), 1 / 3))


def test_predict_and_predict_study_refuse_impossible_tasks(d):
    one = ct3dzoo.load(f"local-dir:{d / 'model'}")
    three = ct3dzoo.load(f"local-dir:{d / 'model3'}")
    x = [torch.rand(1, 4, 32, 32)]
    with pytest.raises(ValueError, match="a 1-output model cannot be multiclass"):
        predict(one, x, task="multiclass")
    with pytest.raises(ValueError, match="task='binary' for a model with 3 outputs"):
        predict_study(three, torch.rand(8, 32, 32), num_slices=4, stride=4, task="binary")
    with pytest.raises(ValueError, match=r"3 outputs and no recorded task: pass task='multil"):
        predict_study(three, torch.rand(8, 32, 32), num_slices=4, stride=4)  # no default
    with pytest.raises(ValueError, match="unknown task 'softmax'"):
        predict_study(one, torch.rand(8, 32, 32), num_slices=4, task="softmax")


# ----------------------------------------------------------------- outputs vs inputs
def test_check_outputs_same_file_symlink_hardlink(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("path\n")
    (tmp_path / "ln.csv").symlink_to(m)
    os.link(m, tmp_path / "hard.csv")
    for out in ("m.csv", "ln.csv", "hard.csv", "./sub/../m.csv"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(OutputClobbersInputError, match=r"--out .* is the input MANIFEST") as e:
            check_outputs({"--out": tmp_path / out}, {"MANIFEST": m})
        assert e.value.option == "--out" and isinstance(e.value, ValueError)
    check_outputs({"--out": tmp_path / "p.csv"}, {"MANIFEST": m})  # another file: fine


def test_check_outputs_folders(tmp_path):
    study = tmp_path / "dicom"
    study.mkdir()
    (study / "1.dcm").write_bytes(b"x")
    with pytest.raises(OutputClobbersInputError, match="overwrite the folder being read"):
        check_outputs({"--out": study}, {"STUDY": [tmp_path / "nope", study]})
    with pytest.raises(OutputClobbersInputError, match=r"would overwrite 1\.dcm, a file of"):
        check_outputs({"--out": study / "1.dcm"}, {"STUDY": study})
    (tmp_path / "errors.jsonl").write_text("")
    with pytest.raises(OutputClobbersInputError, match=r"the command writes .*errors\.jsonl"):
        check_outputs(
            {"--out": tmp_path}, {"MANIFEST": tmp_path / "errors.jsonl"},
            writes={"--out": ("studies", "errors.jsonl")},
        )  # fmt: skip
    check_outputs(  # out holds the manifest but writes other names: fine
        {"--out": tmp_path}, {"MANIFEST": study / "1.dcm"}, writes={"--out": ("studies",)}
    )
    check_outputs({"--out": tmp_path / "r3d_18"}, {"MODEL": "r3d_18"})  # an arch, not a path


def test_cli_outputs_that_are_inputs(capsys, d):
    cases = [
        ("prepare", d / "m.csv", "--out", d / "m.csv"),
        ("prepare", d / "m.csv", "--out", d / "s1.npz"),  # a study of the manifest
        ("finetune", d / "m.csv", "--model", ARCH, "--out", d / "m.csv"),
        ("finetune", d / "m.csv", "--model", d / "model", "--out", d / "model"),
        ("explain", f"local-dir:{d / 'model'}", d / "s1.npz", "--out", d / "model"),
        ("export", ARCH + ".kinetics400", d / "m.csv", "--from", d / "m.csv"),
        ("predict", d / "model", d / "s1.npz", "--out", d / "model" / "model.safetensors"),
    ]
    for argv in cases:
        rc, err = _cli(capsys, *argv)
        assert rc == 1 and f"ct3dzoo {argv[0]}: error:" in err and "overwrite" in err, err
    assert (d / "m.csv").read_text() == "path,label\ns1.npz,1\n"


# --------------------------------------------------------------- devices, counts, sizes
@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--device", "tpu"], ["--device 'tpu' is not a device", "cpu, cuda"]),
        (["--device", "cpu:7"], ["--device cpu:7: the CPU has no numbered devices"]),
        (["--device", "gpu"], ["--device 'gpu' is not a device"]),
        (["--device", "meta"], ["ct3dzoo runs on cpu, cuda[:N] or mps"]),
        (["--batch-size", "0"], ["--batch-size must be positive (> 0); got 0"]),
        (["--num-slices", "-1"], ["--num-slices must be positive"]),
        (["--stride", "0"], ["--stride must be positive"]),
        (["--spacing", "0", "1", "1"], ["--spacing must be positive (> 0); got 0.0, 1.0, 1.0"]),
        (["--spacing", "nan", "1", "1"], ["--spacing must be positive", "nan"]),
        (["--shape", "0", "-1", "32"], ["--shape must be >= 0; got 0, -1, 32"]),
        (["--size", "-1", "32"], ["--shape must be >= 0; got 0, -1, 32"]),  # old spelling
        (["--spacing", "1", "2"], ["--spacing takes 1 number (isotropic) or 3", "got 2"]),
        (["--num-classes", "0"], ["--num-classes must be positive (> 0); got 0"]),
    ],
)  # fmt: skip
def test_predict_bad_numbers_and_devices(capsys, d, tmp_path, extra, words):
    rc, err = _cli(capsys, "predict", d / "model", d / "s1.npz", "--out", tmp_path / "p.csv",
                   *extra)  # fmt: skip
    assert rc == 1 and err.splitlines()[-1].startswith("ct3dzoo predict: error: "), err
    assert all(w in err for w in words), err
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda(capsys, d, tmp_path, device):
    rc, err = _cli(capsys, "finetune", d / "m.csv", "--model", ARCH, "--out", tmp_path / "r",
                   "--device", device)  # fmt: skip
    assert rc == 1 and f"--device {device}: CUDA is not available here" in err
    assert "use --device cpu" in err and not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--target", "-1"], ["--target must be >= 0; got -1"]),
        (["--shape", "0", "-4", "32"], ["--shape must be >= 0; got 0, -4, 32"]),
        (["--num-slices", "0"], ["--num-slices must be positive (> 0); got 0"]),
        (["--slices", "0"], ["--num-slices must be positive (> 0); got 0"]),  # old spelling
        (["--spacing", "1", "-1", "1"], ["--spacing must be positive (> 0)"]),
    ],
)
def test_explain_bad_numbers(capsys, d, tmp_path, extra, words):
    rc, err = _cli(capsys, "explain", f"local-dir:{d / 'model'}", d / "s1.npz", "--out",
                   tmp_path / "x", *extra)  # fmt: skip
    assert rc == 1 and all(w in err for w in words), err


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--spacing", "1", "2"], ["--spacing takes one number or three", "got 2"]),
        (["--spacing", "0"], ["--spacing values must be positive and finite"]),
        (["--spacing", "inf", "1", "1"], ["--spacing values must be positive and finite"]),
        (["--shape", "0", "16", "16"], ["--shape values must be positive"]),
        (["--workers", "0"], ["--workers must be >= 1; got 0"]),
    ],
)
def test_prepare_bad_numbers(capsys, d, tmp_path, extra, words):
    rc, err = _cli(capsys, "prepare", d / "m.csv", "--out", tmp_path / "c", *extra)
    assert rc == 1 and err.startswith("ct3dzoo prepare: error: ")
    assert all(w in err for w in words), err
    assert not (tmp_path / "c").exists()


# ------------------------------------------------- cases another module must fix (xfail)
def test_explain_window_spec_names_the_option(capsys, d, tmp_path):
    rc, err = _cli(capsys, "explain", f"local-dir:{d / 'model'}", d / "s1.npz", "--out",
                   tmp_path / "x", "--windows", "40,abc")  # fmt: skip
    assert rc == 1 and "--windows '40,abc'" in err and "CENTRE,WIDTH" in err


def test_explain_target_out_of_range(capsys, d, tmp_path):
    rc, err = _cli(capsys, "explain", f"local-dir:{d / 'model'}", d / "s1.npz", "--out",
                   tmp_path / "x", "--num-slices", "4", "--shape", "0", "32", "32",
                   "--target", "5")  # fmt: skip
    assert rc == 1 and "--target 5" in err and "1 output" in err


def test_predict_impossible_task_refused_before_the_csv(capsys, d, tmp_path):
    rc, err = _cli(capsys, "predict", d / "model", d / "s1.npz", "--out", tmp_path / "p.csv",
                   "--task", "multiclass", "--num-slices", "4")  # fmt: skip
    assert rc == 1 and "cannot be multiclass" in err and not (tmp_path / "p.csv").exists()


@pytest.fixture
def no_phantoms(monkeypatch):
    """``make_phantom_dataset`` raising: any demo that gets that far has written data."""
    import ct3dzoo.phantom

    def no_data(*a, **k):
        raise RuntimeError("phantoms written before the options were checked")

    monkeypatch.setattr(ct3dzoo.phantom, "make_phantom_dataset", no_data)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--batch-size", "0"], ["--batch-size must be positive (> 0); got 0"]),
        (["--lr", "-0.1"], ["--lr must be positive"]),
        (["--shape", "16", "0", "32"], ["--shape must be positive (> 0); got 16, 0, 32"]),
        (["--size", "16", "0", "32"], ["--shape must be positive (> 0); got 16, 0, 32"]),
        (["--arch", "x3d_xz"], ["--arch x3d_xz: unknown architecture; nearest: x3d_xs"]),
    ],
)
def test_demo_cli_checks_options_before_writing(capsys, tmp_path, no_phantoms, extra, words):
    rc, err = _cli(capsys, "demo", "--out", tmp_path / "demo", *extra)
    assert rc == 1 and all(w in err for w in words), err
    assert not (tmp_path / "demo").exists()


def test_finetune_unknown_arch_before_reading_data(capsys, tmp_path):
    rc, err = _cli(capsys, "finetune", tmp_path / "missing.csv", "--model", "r3d18", "--out",
                   tmp_path / "r")  # fmt: skip
    assert rc == 1 and "--model r3d18: unknown architecture; nearest: r3d_18" in err


def test_demo_function_checks_options_before_writing(tmp_path, no_phantoms):
    from ct3dzoo.demo import demo

    with pytest.raises(ValueError, match="batch_size"):
        demo(out_dir=tmp_path / "demo", batch_size=0, verbose=False, progress=False)


def test_library_predict_refuses_cpu_7(d):
    with pytest.raises(ValueError, match="cpu:7"):
        predict(ct3dzoo.load(f"local-dir:{d / 'model'}"), [torch.rand(1, 4, 32, 32)],
                device="cpu:7")  # fmt: skip


def test_window_with_one_number():
    with pytest.raises(ValueError, match=r"\(centre, width\)"):
        resolve_window((40,))


def test_window_nan_centre():
    with pytest.raises(ValueError, match="finite"):
        resolve_window((float("nan"), 400))


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [({"shape": (4, 16)}, "shape must be 3 numbers; got (4, 16)"),
     ({"shape": (-1, 16, 16)}, "shape must be >= 1 voxel per axis (0: keep that axis)"),
     ({"spacing": (0, 1, 1)}, "spacing must be positive mm; got (0.0, 1.0, 1.0)"),
     ({"spacing": (1, 1)}, "spacing must be 3 numbers; got (1, 1)"),
     ({"windows": "lugn"}, "Unknown window 'lugn'; presets: lung")],
    ids=["shape-2", "shape-neg", "spacing-0", "spacing-2", "window-typo"],
)  # fmt: skip
def test_ctdataset_checks_options_up_front(d, kwargs, words):
    """Refused at construction (CTDataset builds its Preprocessing), not per item."""
    with pytest.raises((ValueError, KeyError)) as e:
        CTDataset(d / "m.csv", **kwargs)
    assert words in str(e.value), str(e.value)


def test_duplicate_ids_with_different_paths(d, tmp_path):
    (tmp_path / "dup.csv").write_text(f"path,label,id\n{d / 's1.npz'},1,a\n{d / 'm.csv'},0,a\n")
    with pytest.raises(ValueError, match="id 'a' names two volumes"):
        CTDataset(tmp_path / "dup.csv")
