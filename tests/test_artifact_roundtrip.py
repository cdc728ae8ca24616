"""Train once, use anywhere: a finetuned model carries its preprocessing, and load, predict,
transforms_for and the Hub reproduce its own validation scores from the saved folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import ct3dzoo
from ct3dzoo import cli
from ct3dzoo.data import CTDataset, Preprocessing, PreprocessingError, transforms, transforms_for
from ct3dzoo.phantom import make_phantom_dataset

pytest.importorskip("pydicom")
pytest.importorskip("nibabel")

SHAPE = (8, 20, 20)  # resampled to this, then centre-cropped to CROP
CROP = (8, 16, 16)
WINDOWS = ["lung", "40,400"]  # two channels, one preset and one C,W


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("phantoms")
    kw = {"shape": (12, 32, 32), "formats": ("dicom",), "masks": False}
    train = make_phantom_dataset(root / "train", n=8, seed=3, **kw)
    val = make_phantom_dataset(root / "val", n=8, seed=4, **kw)
    return {"train": train, "val": val}


def _model() -> ct3dzoo.CTModel:
    torch.manual_seed(0)
    return ct3dzoo.load(
        "medicalnet_resnet10", pretrain=None, num_classes=1, in_chans=2, dilated=False
    )


def _datasets(data: dict[str, Path]) -> tuple[CTDataset, CTDataset]:
    train_tf = transforms.Compose([transforms.RandomFlip(axes=(-1,)), transforms.CenterCrop(CROP)])
    train = CTDataset(data["train"], transform=train_tf, windows=WINDOWS, shape=SHAPE)
    val = CTDataset(
        data["val"], transform=transforms.CenterCrop(CROP), windows=WINDOWS, shape=SHAPE
    )
    return train, val


@pytest.fixture(scope="module")
def run(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    train, val = _datasets(data)
    out = tmp_path_factory.mktemp("run")
    model = _model()
    result = ct3dzoo.finetune(
        model, train, val, out_dir=out, epochs=2, lr=3e-3, batch_size=4, device="cpu",
        progress=False, keep_checkpoints=True,
    )  # fmt: skip
    return {"result": result, "out": out, "val": val, "model": model}


def _scores_csv(path: Path, column: str = "score_label") -> dict[str, float]:
    """Study key (the manifest's group, what validation aggregates over) -> score."""
    rows = list(csv.DictReader(path.read_text().splitlines()))
    return {r["group"]: float(r[column]) for r in rows}


def test_the_saved_folder_holds_the_evaluation_pipeline(run: dict) -> None:
    final = run["out"] / "final"
    pp = Preprocessing.from_pretrained(final)
    # the validation data's pipeline: random flip dropped, the crop, both windows, the shape
    assert pp.shape == SHAPE and pp.intensity == "window"
    assert [type(t).__name__ for t in pp.transforms] == ["CenterCrop"]
    assert pp.transforms[0].size == CROP
    assert list(pp.windows) == ["lung", (40.0, 400.0)]
    assert pp.label_names == ("label",) and pp.task == "binary" and pp.complete
    val = pp.validation
    assert val["n_studies"] == 8 and val["epoch"] == 2
    assert val["metrics"]["val_auroc"] == pytest.approx(run["result"].history[-1]["val_auroc"])
    for ckpt in ("best", "last"):  # every saved folder carries it
        assert Preprocessing.from_pretrained(run["out"] / ckpt) == pp
    card = (final / "README.md").read_text()
    assert "## Preprocessing (as trained)" in card and "lung C -600 / W 1500" in card
    assert "z-score" not in card  # the source contract (MedicalNet) is not what training used
    assert "on 8 validation studies" in card and "Research use only" in card


def test_load_gives_the_pipeline_back_and_transforms_for_reproduces_the_tensor(run: dict) -> None:
    final = run["out"] / "final"
    for ref in (str(final), f"local-dir:{final}"):
        model = ct3dzoo.load(ref)
        assert model.preprocessing == run["model"].preprocessing
    again = ct3dzoo.CTModel.from_pretrained(final)
    tf = transforms_for(again)
    assert tf is again.preprocessing
    val: CTDataset = run["val"]
    for i in (0, 5):
        x = tf(val.records[i]["path"])
        assert torch.equal(x, val[i]["image"])  # max |diff| 0


def test_predict_reproduces_the_validation_scores(run: dict, tmp_path: Path, capsys) -> None:
    final = run["out"] / "final"
    want = _scores_csv(final / "validation_scores.csv")
    out = tmp_path / "p.csv"
    manifest = run["val"].records[0]["path"].parents[1] / "manifest_dicom.csv"
    assert cli.main(["predict", str(final), str(manifest), "--out", str(out)]) == 0
    got = _scores_csv(out)
    assert got.keys() == want.keys()
    assert max(abs(got[k] - want[k]) for k in want) <= 1e-5
    metrics = json.loads((tmp_path / "p.metrics.json").read_text())
    recorded = Preprocessing.from_pretrained(final).validation["metrics"]
    assert metrics["auroc"] == pytest.approx(recorded["val_auroc"], abs=1e-6)
    assert metrics["n_studies"] == 8
    lo, hi = metrics["auroc_ci"]  # the bootstrap interval over the 8 studies
    assert lo <= metrics["auroc"] <= hi
    out_text = capsys.readouterr().out
    assert "AUROC" in out_text and "95% CI" in out_text


def test_flags_override_and_say_what_differs(run: dict, tmp_path: Path, capsys) -> None:
    final = run["out"] / "final"
    study = run["val"].records[0]["path"]
    out = tmp_path / "o.csv"
    args = ["predict", str(final), str(study), "--out", str(out), "--windows", "pe", "lung"]
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "differs from training" in err and "pe" in err
    assert cli.main(["predict", str(final), str(study), "--out", str(out), "--windows", "pe"]) != 0
    assert "takes 2 input channel(s)" in capsys.readouterr().err


def test_the_hub_round_trip_predicts_the_same(run, tmp_path, http_server, hf_env, monkeypatch):
    final = run["out"] / "final"
    model = ct3dzoo.load(str(final))
    pushed: dict[str, bytes] = {}

    def upload_folder(self, *, repo_id, folder_path, **kw):  # what push_to_hub sends
        pushed.update({p.name: p.read_bytes() for p in Path(folder_path).iterdir()})
        return "commit-info"

    from huggingface_hub import HfApi

    monkeypatch.setattr(HfApi, "create_repo", lambda self, *a, **k: None)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    model.push_to_hub("me/pe-demo")
    assert "preprocessor_config.json" in pushed and "model.safetensors" in pushed
    http_server.serve_hf_repo("me/pe-demo", pushed)
    monkeypatch.setenv("HF_ENDPOINT", http_server.base)
    hub = ct3dzoo.load("hf-hub:me/pe-demo", progress=False)
    assert hub.preprocessing == model.preprocessing
    study = run["val"].records[3]["path"]
    a = ct3dzoo.predict_study(model, study)
    b = ct3dzoo.predict_study(hub, study)
    assert np.array_equal(a.score, b.score) and np.array_equal(a.logit, b.logit)


def test_cli_finetune_two_windows_and_a_shape_reproduce(data, tmp_path: Path) -> None:
    out = tmp_path / "cli-run"
    argv = ["finetune", str(data["train"]), "--val", str(data["val"]), "--model",
            "medicalnet_resnet10", "--pretrain", "none", "--windows", "lung", "mediastinal",
            "--shape", "8", "16", "16", "--epochs", "1", "--batch-size", "4", "--lr", "3e-3",
            "--out", str(out), "--device", "cpu", "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    pp = Preprocessing.from_pretrained(out / "final")
    assert pp.shape == (8, 16, 16) and list(pp.windows) == ["lung", "mediastinal"]
    p = tmp_path / "p.csv"
    assert cli.main(["predict", str(out / "final"), str(data["val"]), "--out", str(p)]) == 0
    want = _scores_csv(out / "final" / "validation_scores.csv")
    got = _scores_csv(p)
    assert max(abs(got[k] - want[k]) for k in want) <= 1e-5


def test_a_user_callable_is_recorded_and_refused_at_use(data, tmp_path: Path) -> None:
    def my_crop(x: torch.Tensor) -> torch.Tensor:
        return x[..., 2:-2, 2:-2]

    ds = CTDataset(data["val"], transform=my_crop, windows="lung", shape=SHAPE)
    model = ct3dzoo.load("medicalnet_resnet10", pretrain=None, num_classes=1, dilated=False)
    ct3dzoo.finetune(model, ds, ds, out_dir=tmp_path / "r", epochs=1, batch_size=4,
                     device="cpu", progress=False)  # fmt: skip
    saved = json.loads((tmp_path / "r" / "final" / "preprocessor_config.json").read_text())
    assert "my_crop" in saved["unserialisable"][0]
    again = ct3dzoo.load(str(tmp_path / "r" / "final"))
    with pytest.raises(PreprocessingError, match=r"cannot rebuild.*my_crop"):
        transforms_for(again)
    study = ds.records[0]["path"]
    with pytest.raises(PreprocessingError, match="Pass the preprocessing explicitly"):
        ct3dzoo.predict_study(again, study)
    # flags that say what to use instead are accepted
    res = ct3dzoo.predict_study(again, study, windows="lung", num_slices=8)
    assert 0.0 <= float(res.score[0]) <= 1.0


def test_pipeline_json_round_trip_and_refusals() -> None:
    tf = transforms.Compose([
        transforms.RandomCrop((4, 8, 8)), transforms.RandomRotation(5), transforms.RandomIntensity(),
        transforms.Resize((4, 6, 6), mode="trilinear"),
    ])  # fmt: skip
    pp = Preprocessing.from_options(transform=tf, windows=("pe", (40, 400)), spacing=2.0)
    assert [type(t).__name__ for t in pp.transforms] == ["CenterCrop", "Resize"]
    assert pp.spacing == (2.0, 2.0, 2.0)
    back = Preprocessing.from_dict(json.loads(pp.to_json()))
    assert back == pp and back.transforms[1].mode == "trilinear"
    for transform in ("CenterCrop", "RandomCrop", "RandomFlip", "RandomRotation", "RandomIntensity",
                      "Resize", "Window", "Compose"):  # fmt: skip
        assert transform in transforms.TRANSFORMS
    bad = pp.to_dict()
    bad["transforms"] = [{"name": "os.system", "command": "rm"}]
    with pytest.raises(ValueError, match=r"unknown transform 'os.system'.*registered"):
        Preprocessing.from_dict(bad)
    newer = {**pp.to_dict(), "version": 99}
    with pytest.raises(PreprocessingError, match="upgrade ct3dzoo"):
        Preprocessing.from_dict(newer)
    with pytest.raises(PreprocessingError, match=r"unknown task 'multi-class'.*multiclass"):
        Preprocessing(task="multi-class")
    with pytest.raises(PreprocessingError, match="not both"):
        Preprocessing(spacing=1.0, shape=(4, 4, 4))


def test_explain_and_predict_agree_and_saliency_lands_on_the_study_grid(
    run, tmp_path, monkeypatch
) -> None:
    pytest.importorskip("pytorch_grad_cam")
    pytest.importorskip("matplotlib")
    from ct3dzoo.explain import cli as explain_cli
    from ct3dzoo.explain import study_saliency

    titles: list[str] = []
    draw = explain_cli.saliency_montage
    monkeypatch.setattr(explain_cli, "saliency_montage",
                        lambda *a, title, **kw: titles.append(title) or draw(*a, title=title, **kw))  # fmt: skip

    model = ct3dzoo.load(str(run["out"] / "final"))
    study = run["val"].records[2]["path"]
    pred = ct3dzoo.predict_study(model, study)
    expl = study_saliency(model, study)
    assert abs(pred.score[0] - expl.score) <= 1e-6 and abs(pred.logit[0] - expl.logit) <= 1e-5
    vol = ct3dzoo.data.read_volume(study)
    assert expl.saliency.shape == vol.shape and expl.input_saliency.shape == CROP
    out = tmp_path / "expl"
    assert cli.main(["explain", str(run["out"] / "final"), str(study), "--out", str(out)]) == 0
    summary = json.loads((out / "saliency.json").read_text())
    assert summary["score"] == pytest.approx(float(pred.score[0]), abs=1e-6)
    # the montage names the model's folder and its output by the label it was trained on
    assert titles[0].startswith(f"{run['out'].name}/final: label (output 0), slices 0-")
    assert f"p {pred.score[0]:.3f}" in titles[0]
    sal = ct3dzoo.data.read_nifti(out / "saliency.nii.gz")
    assert sal.shape == vol.shape and np.allclose(sal.affine, vol.affine, atol=1e-4)
    assert not (out / "slice_scores.png").exists()  # one window: a flat curve is not drawn


def test_a_map_goes_back_through_crop_and_resampling_to_the_right_voxel() -> None:
    pp = Preprocessing(shape=(8, 20, 20), transforms=(transforms.CenterCrop((8, 16, 16)),))
    m = np.zeros((8, 16, 16), dtype=np.float32)
    m[4, 3, 11] = 1.0  # input voxel -> grid (4, 5, 13) -> study (6, 8, 20.8) of a 12x32x32 study
    back = pp.map_to_study(m, grid_shape=(8, 20, 20), volume_shape=(12, 32, 32))
    assert back.shape == (12, 32, 32)
    peak = np.unravel_index(int(back.argmax()), back.shape)
    centre = [(i + 0.5) * n / g - 0.5 for i, n, g in zip((4, 5, 13), (12, 32, 32), (8, 20, 20))]
    assert all(abs(p - c) <= 1.0 for p, c in zip(peak, centre)), (peak, centre)
    assert back[:, :, :3].max() == 0  # the cropped-away border stays zero


@pytest.mark.parametrize("name", sorted(transforms.TRANSFORMS))
def test_every_registered_transform_round_trips(name: str) -> None:
    examples = {
        "CenterCrop": transforms.CenterCrop((4, None, 6), fill=-900.0),
        "RandomCrop": transforms.RandomCrop((4, 6, 6)),
        "RandomFlip": transforms.RandomFlip(axes=(-1, -3), p=0.3),
        "RandomRotation": transforms.RandomRotation((-5.0, 7.5), fill=-1024.0, p=0.5),
        "RandomIntensity": transforms.RandomIntensity(shift=10.0, scale=0.02, p=0.9),
        "Resize": transforms.Resize((4, 5, 6), mode="trilinear"),
        "Window": transforms.Window(["lung", (40.0, 400.0)]),
        "Compose": transforms.Compose(
            [transforms.CenterCrop((4, 6, 6)), transforms.Resize((2, 3, 3))]
        ),
    }
    t = examples[name]
    cfg = transforms.transform_to_config(t)
    again = transforms.transform_from_config(json.loads(json.dumps(cfg)))
    assert type(again) is type(t) and transforms.transform_to_config(again) == cfg
    x = torch.linspace(-1000, 1000, 8 * 8 * 8).reshape(1, 8, 8, 8)
    if name.startswith("Random"):
        torch.manual_seed(0)
        a = t(x.clone())
        torch.manual_seed(0)
        b = again(x.clone())
    else:
        a, b = t(x.clone()), again(x.clone())
    assert torch.equal(a, b)


def test_reader_options_are_recorded_and_reach_the_reader(tmp_path: Path, monkeypatch) -> None:
    pp = Preprocessing(series="largest", tilt="error", gaps="stack", series_uid="1.2.3")
    back = Preprocessing.from_dict(json.loads(pp.to_json()))
    assert back == pp and back.gaps == "stack"
    seen: dict = {}

    def reader(path, **kw):
        seen.update(kw)
        raise FileNotFoundError("stop here")

    monkeypatch.setattr("ct3dzoo.data._pipeline_steps.read_volume", reader)
    with pytest.raises(FileNotFoundError, match="stop here"):
        pp.read_raw(tmp_path)
    assert seen == {"series_uid": "1.2.3", "series": "largest", "tilt": "error", "gaps": "stack"}
    with pytest.raises(PreprocessingError, match="gaps='interpolate': one of"):
        Preprocessing(gaps="interpolate")


def test_a_weights_contract_transform_is_recorded_with_its_orientation() -> None:
    merlin = transforms_for("merlin_i3resnet152")  # HU range, axis codes "SRA"
    pp = Preprocessing.from_options(transform=merlin, windows=None)
    assert pp.complete and pp.intensity == "hu_range" and pp.orientation == "SRA"
    hu = torch.linspace(-1200, 1200, 4 * 5 * 6).reshape(1, 4, 5, 6)
    assert torch.equal(pp.to_input(hu), merlin(hu))  # what the dataset fed the model
