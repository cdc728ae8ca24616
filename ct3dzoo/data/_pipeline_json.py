"""The JSON form of a :class:`~ct3dzoo.data.Preprocessing` (``preprocessor_config.json``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import PreprocessingError
from ._pipeline_steps import describe_callable
from ._transform_registry import transform_from_config, transform_to_config

__all__ = ["PIPELINE_VERSION", "pipeline_fields", "pipeline_to_dict"]

#: bumped when the JSON layout changes; a newer file is refused with "upgrade ct3dzoo"
PIPELINE_VERSION = 1


def pipeline_to_dict(self: Any) -> dict[str, Any]:
    """The JSON form of a pipeline (``preprocessor_config.json``)."""
    steps = []
    for t in self.transforms:
        cfg = transform_to_config(t)
        steps.append(cfg if cfg is not None else {"name": None, "repr": describe_callable(t)})
    return {
        "format": "ct3dzoo.preprocessing",
        "version": PIPELINE_VERSION,
        "reader": {
            "series_uid": self.series_uid,
            "series": self.series,
            "tilt": self.tilt,
            "gaps": self.gaps,
        },
        "resample": {
            "spacing": None if self.spacing is None else list(self.spacing),
            "shape": None if self.shape is None else list(self.shape),
            "mode": self.resample_mode,
            "hu_dtype": self.hu_dtype,
        },
        "orientation": self.orientation,
        "transforms": steps,
        "intensity": {
            "kind": self.intensity,
            "windows": None
            if self.windows is None
            else [w if isinstance(w, str) else list(w) for w in self.windows],
            "hu_range": None if self.hu_range is None else list(self.hu_range),
            "zscore_threshold": self.zscore_threshold,
        },
        "slice_windows": {
            "num_slices": self.num_slices,
            "stride": self.stride,
            "reduce": self.reduce,
        },
        "labels": {"names": list(self.label_names), "task": self.task},
        "unserialisable": list(self.unserialisable),
        "validation": None if self.validation is None else dict(self.validation),
    }


def pipeline_fields(d: Mapping[str, Any], *, source: str = "preprocessing") -> dict[str, Any]:
    """The dataclass fields from :func:`pipeline_to_dict`'s output; names only registered
    transforms (nothing is imported from a name)."""
    if not isinstance(d, Mapping) or d.get("format") != "ct3dzoo.preprocessing":
        raise PreprocessingError(f"{source} is not a ct3dzoo preprocessing config")
    if int(d.get("version", 0)) > PIPELINE_VERSION:
        raise PreprocessingError(
            f"{source} has pipeline version {d['version']}, newer than this ct3dzoo reads "
            f"({PIPELINE_VERSION}); upgrade ct3dzoo"
        )
    try:
        rd, rs, it = d["reader"], d["resample"], d["intensity"]
        sw, lb = d["slice_windows"], d["labels"]
        notes = list(d.get("unserialisable") or [])
        steps = []
        for cfg in d.get("transforms") or []:
            if cfg.get("name") is None:  # recorded as not rebuildable
                continue
            steps.append(transform_from_config(cfg))
        return dict(
            series_uid=rd.get("series_uid"),
            series=rd.get("series", "error"),
            tilt=rd.get("tilt", "resample"),
            gaps=rd.get("gaps", "regularise"),
            spacing=rs.get("spacing"),
            shape=rs.get("shape"),
            resample_mode=rs.get("mode", "trilinear"),
            hu_dtype=rs.get("hu_dtype", "float32"),
            orientation=d.get("orientation"),
            transforms=tuple(steps),
            intensity=it["kind"],
            windows=it.get("windows"),
            hu_range=it.get("hu_range"),
            zscore_threshold=it.get("zscore_threshold"),
            num_slices=sw.get("num_slices"),
            stride=sw.get("stride"),
            reduce=sw.get("reduce", "max"),
            label_names=tuple(lb.get("names") or ()),
            task=lb.get("task"),
            unserialisable=tuple(notes),
            validation=d.get("validation"),
        )
    except (KeyError, TypeError, AttributeError) as e:
        raise PreprocessingError(f"{source} is malformed ({type(e).__name__}: {e})") from None
