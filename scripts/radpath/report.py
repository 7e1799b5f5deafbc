"""The self-contained HTML report (images embedded, no external assets)."""

from __future__ import annotations

import base64
import io
import itertools
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
from PIL import Image

from radpath.io import atomic_write, read_tsv
from radpath.jobs import exclusion_reason

MODEL_DESCRIPTIONS = {
    "clinical": "clinical covariates only",
    "radiomics_raw": "CT radiomics, not harmonized",
    "radiomics": "CT radiomics, ComBat-harmonized",
    "clinical_radiomics": "clinical covariates + harmonized CT radiomics",
    "pathomics_embedding": "H&E tile embeddings pooled per patient (PCA fitted on training)",
    "pathomics_morphology": "H&E nuclear and tissue morphology",
    "clinical_pathomics": "clinical covariates + H&E embeddings + morphology",
    "clinical_radiomics_pathomics": "clinical + harmonized CT radiomics + H&E pathomics",
}


def embed_png(path: str | Path) -> str:
    """A data: URI of a PNG plot (kept lossless: lines and text)."""
    raw = Path(path).read_bytes()
    return f"data:image/png;base64,{base64.b64encode(raw).decode('ascii')}"


def embed_photo(path: str | Path, max_size: int = 480) -> str:
    """A data: URI of a downscaled JPEG of an image (slide thumbnails: keeps the report small)."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((max_size, max_size))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=80)
    return f"data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def fmt_ci(estimate: float, low: float, high: float) -> str:
    if not np.isfinite(estimate):
        return "n/a"
    return f"{estimate:.3f} ({low:.3f}–{high:.3f})"


def fmt_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def performance_rows(cindex: pd.DataFrame, reference: str) -> list[dict]:
    rows = []
    for r in cindex.to_dict("records"):
        row = {
            "endpoint": r["endpoint"].upper(),
            "model": r["model"],
            "description": MODEL_DESCRIPTIONS.get(r["model"], ""),
            "cohort": r["cohort"],
            "n": int(r["n"]),
            "events": int(r["events"]),
            "harrell": fmt_ci(r["harrell_c"], r["harrell_lo"], r["harrell_hi"]),
            "uno": fmt_ci(r["uno_c"], r["uno_lo"], r["uno_hi"]),
            "delta": "",
            "corrected": "",
            "logrank": fmt_p(r.get("logrank_p", np.nan)),
        }
        if r["model"] != reference and np.isfinite(r.get("delta_harrell", np.nan)):
            row["delta"] = (
                f"{r['delta_harrell']:+.3f} ({r['delta_lo']:+.3f} to {r['delta_hi']:+.3f}), "
                f"p={fmt_p(r.get('delta_p', np.nan))}"
            )
        if r["cohort"] == "train" and np.isfinite(r.get("optimism_corrected_c", np.nan)):
            row["corrected"] = f"{r['optimism_corrected_c']:.3f}"
        rows.append(row)
    return rows


def coefficient_tables(files: dict[tuple[str, str], str]) -> list[dict]:
    tables = []
    for (endpoint, model), path in files.items():
        coef = pd.read_csv(path, sep="\t")
        rows = [
            {
                "feature": r["feature"],
                "hr": fmt_ci(r["hr"], r["hr_lower"], r["hr_upper"]),
                "p": fmt_p(r["p"]),
            }
            for r in coef.to_dict("records")
        ]
        tables.append({"endpoint": endpoint.upper(), "model": model, "rows": rows})
    return tables


def selection_tables(files: dict[tuple[str, str], str]) -> list[dict]:
    tables = []
    for (endpoint, model), path in files.items():
        log = pd.read_csv(path, sep="\t").fillna("")
        tables.append(
            {"endpoint": endpoint.upper(), "model": model, "rows": log.to_dict("records")}
        )
    return tables


def cohort_summary(outcomes: pd.DataFrame) -> list[dict]:
    rows = []
    for split, part in outcomes.groupby("split"):
        rows.append(
            {
                "split": split,
                "n": len(part),
                "os_events": int(part["os_event"].sum()),
                "os_median_followup": float(part["os_time"].median()),
                "pfs_events": int(part["pfs_event"].sum()),
            }
        )
    return rows


def batch_summary(tests: pd.DataFrame) -> dict:
    """Share of features whose distribution differs by batch (p < 0.05) before and after."""
    summary = {}
    for when in ("before", "after"):
        column = f"kruskal_p_{when}"
        if column not in tests.columns:
            continue
        p = tests[column].dropna()
        summary[when] = {"n": len(p), "significant": int((p < 0.05).sum()),
                         "share": float((p < 0.05).mean()) if len(p) else float("nan")}
    return summary


def slide_gallery(slides: dict[str, str], slide_patients: dict[str, str]) -> list[dict]:
    """QC thumbnails of every slide (excluded slides are listed elsewhere, not drawn)."""
    gallery = []
    for slide_id, path in slides.items():
        if exclusion_reason(path) is None:
            gallery.append({"slide_id": slide_id, "patient_id": slide_patients[slide_id],
                            "img": embed_photo(path)})
    return gallery


def render_report(
    inputs,
    endpoints: list[str],
    models: list[str],
    config: dict,
    out_path,
    slides: dict[str, str] | None = None,
    slide_patients: dict[str, str] | None = None,
):
    keys = list(itertools.product(endpoints, models))
    slides = slides or {}
    cindex = pd.read_csv(inputs.cindex, sep="\t")
    outcomes = read_tsv(inputs.outcomes, index_col="patient_id")
    excluded = pd.read_csv(inputs.excluded, sep="\t")
    km_dir = Path(inputs.km)
    context = {
        "config": config,
        "cohort": cohort_summary(outcomes),
        "excluded": excluded.to_dict("records"),
        "slides": slide_gallery(slides, slide_patients or {}),
        "n_slides": len(slides),
        "slide_excluded": (
            pd.read_csv(inputs.pathomics_excluded[0], sep="\t").to_dict("records")
            if slides else []
        ),
        "performance": performance_rows(cindex, config["reference_model"]),
        "forest": embed_png(inputs.forest),
        "km": [
            {"endpoint": e.upper(), "model": m, "img": embed_png(km_dir / f"{e}_{m}.png")}
            for e, m in keys
        ],
        "pca": embed_png(inputs.pca),
        "batch": batch_summary(pd.read_csv(inputs.batch_tests, sep="\t")),
        "coefficients": coefficient_tables(dict(zip(keys, inputs.coefficients, strict=True))),
        "selection": selection_tables(dict(zip(keys, inputs.selection, strict=True))),
        "models": [{"name": m, "description": MODEL_DESCRIPTIONS.get(m, ""),
                    **config["models"][m]} for m in models],
    }
    template = jinja2.Template(Path(inputs.template).read_text(encoding="utf-8"), autoescape=True)
    with atomic_write(out_path) as handle:
        handle.write(template.render(**context))
