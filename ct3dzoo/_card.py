"""The model card (``README.md``) of a saved model: what it is, what it was trained on and
with which preprocessing, how it validated, its licence, intended use and citation."""

from __future__ import annotations

from typing import Any

from .data.pipeline import Preprocessing

__all__ = ["KE_2023", "model_card"]

KE_2023 = (
    "Alexander Ke, Shih-Cheng Huang, Chloe P. O'Connell, Michal Klimont, Serena Yeung, "
    "Pranav Rajpurkar. Video Pretraining Advances 3D Deep Learning on Chest CT Tasks. "
    "Medical Imaging with Deep Learning (MIDL), 2023."
)
_KE_BIBTEX = """@inproceedings{ke2023video,
  title     = {Video Pretraining Advances 3D Deep Learning on Chest CT Tasks},
  author    = {Ke, Alexander and Huang, Shih-Cheng and O'Connell, Chloe P. and Klimont, Michal
               and Yeung, Serena and Rajpurkar, Pranav},
  booktitle = {Medical Imaging with Deep Learning (MIDL)},
  year      = {2023}
}"""


def _hf_license(text: str | None) -> str:
    t = (text or "").lower()
    if "apache" in t:
        return "apache-2.0"
    if "bsd-3" in t:
        return "bsd-3-clause"
    if "mit" in t.split():
        return "mit"
    return "other"


_PRETRAINED = {
    "video": "video-pretrained",
    "imagenet": "ImageNet-pretrained",
    "ct": "CT-pretrained",
    None: "pretrained",
}


def model_card(config: dict[str, Any], preprocessing: Preprocessing | None = None) -> str:
    """A README.md model card for a saved model's ``config`` and its training record."""
    mc, src, inp = config["model_config"], config["source_weights"], config["input"]
    arch = mc["arch"]
    weights = f"{arch}.{mc['tag']}" if mc.get("tag") and mc.get("pretrain") else None
    if inp.get("windows"):
        win = "; ".join(
            f"channel {i}: {w['name'] + ' ' if w['name'] else ''}centre {w['centre']:g} / width "
            f"{w['width']:g} HU ([{w['hu_range'][0]:g}, {w['hu_range'][1]:g}] HU)"
            for i, w in enumerate(inp["windows"])
        )
    else:
        win = (
            "not recorded (pass windows= to save_pretrained); e.g. the paper's CTPA window "
            "is [-100, 900] HU (`ct3dzoo.data.WINDOWS['pe']`)"
        )
    size = inp.get("size")
    size_txt = (
        f"built for D x H x W = {' x '.join(str(s) for s in size if s is not None)}"
        if size
        else "any D, H, W the architecture's strides allow"
    )
    native = inp.get("native_size")
    lines = [
        "---",
        "library_name: ct3dzoo",
        f"license: {_hf_license(src.get('license'))}",
        "tags:",
        "  - ct3dzoo",
        "  - medical-imaging",
        "  - computed-tomography",
        "  - 3d",
        "  - video-pretraining",
        "---",
        "",
        f"# {arch} for CT (ct3dzoo)",
        "",
        f"A {_PRETRAINED[src.get('pretrain_source')] if weights else 'randomly initialised'} "
        f"`{arch}` for {mc['in_chans']}-channel CT input, built by "
        "[ct3dzoo](https://github.com/ct3dzoo/ct3dzoo)"
        + (
            ": the stem folds the source weights' RGB normalisation in, so the model takes "
            "HU-windowed volumes directly."
            if src.get("stem")
            else "."
        ),
        "",
        "## Model",
        "",
        f"- architecture: `{arch}`; {config['num_features']} features; head `{mc['head']}` with "
        f"{mc['num_classes']} outputs"
        + (" (pre-logits features)" if mc["num_classes"] == 0 else ""),
        (f"- source weights: `{weights}`" if weights else "- source weights: none (random init)")
        + (
            " (read from a local file; not checked against the published hash)"
            if mc.get("pretrain") == "file"
            else ""
        ),
    ]
    if weights:
        lines += [
            f"  - trained on {src.get('dataset') or '?'} by {src.get('publisher') or '?'}; "
            f"original file: {src.get('url') or src.get('hf_hub_id') or 'see the citation'}",
            f"  - licence of the source weights: {src.get('license') or 'unknown'}",
        ]
    lines += [
        "",
        "## Input contract",
        "",
        f"- tensor `(B, {mc['in_chans']}, D, H, W)`, float32, D = slices",
        f"- values: {inp['preprocessing']}"
        + (
            f"; windows: {win}" if inp.get("contract", {}).get("kind", "window") == "window" else ""
        ),
        f"- size: {size_txt}"
        + (f" (source clip T x H x W = {' x '.join(map(str, native))})" if native else ""),
        "- no further normalisation: the model applies the source weights' mean/std itself",
        "",
        *_training_sections(preprocessing),
        "## Usage",
        "",
        "```python",
        "import ct3dzoo",
        'model = ct3dzoo.load("hf-hub:ORG/NAME")  # or "local-dir:/path/to/this/folder"',
        "```",
        "",
    ]
    if preprocessing is not None:
        lines += [
            "The folder carries its preprocessing: `ct3dzoo predict MODEL STUDY... --out "
            "scores.csv` and `ct3dzoo explain MODEL STUDY --out DIR` read a study from disk "
            "exactly as training did.",
            "",
        ]
    lines += [
        "## Intended use and limits",
        "",
        "Research use only. This is not a medical device and has not been evaluated for "
        "clinical use; validation figures are on the data named above and do not carry over "
        "to other scanners, protocols or populations without new validation.",
        "",
        "## Citation",
        "",
    ]
    if weights and src.get("citation"):
        lines += ["Source model:", "", f"> {src['citation']}", ""]
    lines += [
        "Video pretraining for chest CT:",
        "",
        f"> {KE_2023}",
        "",
        "```bibtex",
        _KE_BIBTEX,
        "```",
        "",
    ]
    return "\n".join(lines)


def _fmt_metric(v: Any) -> str:
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return f"[{float(v[0]):.3f}, {float(v[1]):.3f}]"
    return f"{float(v):.4f}" if isinstance(v, (int, float)) else str(v)


def _training_sections(pp: Preprocessing | None) -> list[str]:
    """The card's sections on what training did (empty for source weights)."""
    if pp is None:
        return []
    out = ["## Preprocessing (as trained)", "", *pp.describe(), ""]
    out += ["## Outputs", ""]
    names = ", ".join(f"`{n}`" for n in pp.label_names) or "not recorded"
    out += [f"- task: {pp.task or 'not recorded'}; labels: {names}", ""]
    val = dict(pp.validation or {})
    if val:
        n = val.get("n_studies")
        where = f" on {n} validation studies" if n is not None else ""
        ep = f" (epoch {val['epoch']})" if val.get("epoch") is not None else ""
        out += ["## Validation", "", f"Measured by `ct3dzoo.finetune`{where}{ep}:", ""]
        for k, v in sorted((val.get("metrics") or {}).items()):
            out.append(f"- {k}: {_fmt_metric(v)}")
        out.append("")
    return out
