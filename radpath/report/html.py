"""The self-contained HTML report (images embedded, no external assets)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import itertools
import re
import subprocess
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
from PIL import Image

from radpath.inputs.cohort import outcome_endpoints
from radpath.inputs.io import atomic_write, read_json, read_tsv
from radpath.inputs.runtime import exclusion_reason
from radpath.survival.metrics import TRAINING_CENSORING
from radpath.survival.modeling import Z_95, FittedModel
from radpath.survival.selection import STEP_LABELS, where_emptied
from radpath.survival.status import OK, has_constant_risk, has_result, status_text

MODEL_DESCRIPTIONS = {
    "clinical": "clinical covariates only",
    "radiomics_raw": "CT radiomics, not harmonized",
    "radiomics": "CT radiomics, ComBat-harmonized",
    "clinical_radiomics": "clinical covariates + harmonized CT radiomics",
    "pathomics_embedding": "H&E tile embeddings pooled per patient (PCA fitted on training)",
    "pathomics_morphology": "H&E nuclear and tissue morphology",
    "clinical_pathomics": "clinical covariates + H&E embeddings + morphology",
    "clinical_radiomics_pathomics": "clinical + harmonized CT radiomics + H&E pathomics",
    "pathosig": "PathoSig: phenotype-cluster proportions significant in univariate Cox, "
                "refit together",
    "clinical_pathosig": "clinical covariates + PathoSig phenotype clusters",
    "deep_ct": "deep CT: 3D CNN risk score (out-of-fold on training, one fold model per "
               "network on validation)",
    "clinical_deep_ct": "clinical covariates + deep CT score",
    "clinical_radiomics_deep_ct": "clinical + harmonized CT radiomics + deep CT score",
}
HPC_PREFIX = "pathomics_hpc:"


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
    """The C-index table's rows, formatted. A model without a result of its own
    (radpath.survival.status) shows its status instead of numbers."""
    rows = []
    for r in cindex.to_dict("records"):
        status = status_text(r.get("status"))
        row = {
            "endpoint": r["endpoint"].upper(),
            "model": r["model"],
            "description": MODEL_DESCRIPTIONS.get(r["model"], ""),
            "cohort": r["cohort"],
            "n": int(r["n"]),
            "events": int(r["events"]),
            "status": status,
            "harrell": "",
            "uno": "",
            "delta": "",
            "corrected": "",
            "logrank": "",
        }
        if status != OK:
            rows.append(row)
            continue
        row.update(harrell=fmt_ci(r["harrell_c"], r["harrell_lo"], r["harrell_hi"]),
                   uno=fmt_ci(r["uno_c"], r["uno_lo"], r["uno_hi"]),
                   logrank=fmt_p(r.get("logrank_p", np.nan)))
        if r["model"] != reference and np.isfinite(r.get("delta_harrell", np.nan)):
            row["delta"] = (
                f"{r['delta_harrell']:+.3f} ({r['delta_lo']:+.3f} to {r['delta_hi']:+.3f}), "
                f"p={fmt_p(r.get('delta_p', np.nan))}"
            )
        if r["cohort"] == "train" and np.isfinite(r.get("optimism_corrected_c", np.nan)):
            row["corrected"] = f"{r['optimism_corrected_c']:.3f}"
            failed = int(r.get("optimism_B_failed") or 0)
            if failed:
                row["corrected"] += (
                    f" ({failed} of {int(r['optimism_B'])} refits failed: "
                    f"{r.get('optimism_failures', '')})"
                )
        rows.append(row)
    return rows


def model_statuses(cindex: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(endpoint, model) -> status, from the C-index table (ok for a table without one)."""
    return {(r["endpoint"], r["model"]): status_text(r.get("status"))
            for r in cindex.to_dict("records")}


def left_out_models(statuses: dict[tuple[str, str], str]) -> list[dict]:
    """The models the forest plot and the comparisons leave out, with why."""
    return [{"endpoint": endpoint.upper(), "model": model, "status": status}
            for (endpoint, model), status in statuses.items() if status != OK]


def constant_risk_models(statuses: dict[tuple[str, str], str]) -> list[dict]:
    """The models without a Kaplan-Meier plot (a constant risk)."""
    return [r for r in left_out_models(statuses) if has_constant_risk(r["status"])]


def km_figures(km_dir: Path, keys, statuses: dict[tuple[str, str], str]) -> list[dict]:
    """The KM plots to show: every model's except those with a constant risk (none drawn)."""
    return [
        {"endpoint": e.upper(), "model": m, "img": embed_png(Path(km_dir) / f"{e}_{m}.png"),
         "status": statuses.get((e, m), OK)}
        for e, m in keys if not has_constant_risk(statuses.get((e, m), OK))
    ]  # fmt: skip


def hazard_ratio_row(r: dict) -> dict:
    """A coefficient row for readers: binary terms per unit (the category against its
    reference), continuous ones per training SD with the SD in the feature's own units."""
    if r.get("binary") in (True, "True", 1):
        sd = float(r["train_sd"])
        log_hr, half_width = r["coef"] / sd, Z_95 * r["se"] / sd
        hr = fmt_ci(np.exp(log_hr), np.exp(log_hr - half_width), np.exp(log_hr + half_width))
        scale = "1 vs 0 (category vs reference)"
    else:
        hr = fmt_ci(r["hr"], r["hr_lower"], r["hr_upper"])
        scale = f"per SD (SD = {float(r['train_sd']):.4g})"
    return {"feature": r["feature"], "hr": hr, "scale": scale, "p": fmt_p(r["p"])}


def coefficient_tables(files: dict[tuple[str, str], str]) -> list[dict]:
    tables = []
    for (endpoint, model), path in files.items():
        coef = read_tsv(path)
        rows = [hazard_ratio_row(r) for r in coef.to_dict("records")]
        tables.append({"endpoint": endpoint.upper(), "model": model, "rows": rows})
    return tables


def pathosig_section(
    mosaic_table: str | Path,
    mosaic_dir: str | Path,
    history: str | Path,
    coefficient_files: dict[tuple[str, str], str],
    models_cfg: dict,
) -> dict:
    """Cluster mosaics, each with the signature models that kept its proportion (HR, p),
    and the clustering network's last training epoch."""
    kept: dict[str, list[str]] = {}
    for (endpoint, model), path in coefficient_files.items():
        if "pathomics_hpc" not in models_cfg[model]["blocks"]:
            continue
        for r in read_tsv(path).to_dict("records"):
            if str(r["feature"]).startswith(HPC_PREFIX):
                kept.setdefault(r["feature"][len(HPC_PREFIX):], []).append(
                    f"{endpoint.upper()} {model}: HR {r['hr']:.2f} per SD, p {fmt_p(r['p'])}"
                )
    clusters = [
        {**row, "img": embed_photo(Path(mosaic_dir) / row["file"], 400),
         "signature": kept.get(row["cluster"], [])}
        for row in read_tsv(mosaic_table).to_dict("records")
    ]
    epochs = read_tsv(history).to_dict("records")
    return {"clusters": clusters, "first": epochs[0] if epochs else {},
            "last": epochs[-1] if epochs else {}}


def treatment_section(table_path: str | Path, plots_dir: str | Path, column: str) -> dict:
    """Validation rows of the treatment-benefit table (formatted) and their KM plots."""
    table = read_tsv(table_path)
    rows = []
    for r in table[table["cohort"] == "validation"].to_dict("records"):
        rows.append({
            "endpoint": r["endpoint"].upper(), "model": r["model"], "n": int(r["n"]),
            "events": int(r["events"]),
            "arms": f"{r['n_low_untreated']}/{r['n_low_treated']}/"
                    f"{r['n_high_untreated']}/{r['n_high_treated']}",
            "low": fmt_ci(r["hr_treated_low"], r["hr_treated_low_lo"], r["hr_treated_low_hi"]),
            "high": fmt_ci(r["hr_treated_high"], r["hr_treated_high_lo"],
                           r["hr_treated_high_hi"]),
            "p": fmt_p(r["p_interaction"]), "note": r["note"] if r["note"] == r["note"] else "",
            "img": embed_png(Path(plots_dir) / f"{r['endpoint']}_{r['model']}.png"),
        })  # fmt: skip
    return {"column": column, "rows": rows}


def start_rows(starts: str, label: str = "start") -> list[dict]:
    """The validation C of each start (starts.tsv of deep_ct_block), or with and without
    synthetic CTs (synthetic.tsv, label `variant`), formatted."""
    table = read_tsv(starts)
    return [{
        "start": r[label], "members": r["members"],
        "n": int(r["n_validation"]), "events": int(r["events_validation"]),
        "c": fmt_ci(r["validation_c"], r["validation_lo"], r["validation_hi"]),
        "difference": (fmt_ci(r["difference"], r["difference_lo"], r["difference_hi"])
                       if r["difference"] == r["difference"] else "reference"),
        "p": fmt_p(r["difference_p"]) if r["difference_p"] == r["difference_p"] else "",
        "oof": f"{r['training_oof_c']:.2f}" if r["training_oof_c"] == r["training_oof_c"] else "",
    } for r in table.to_dict("records")]


def pretrain_rows(usage_paths: list[str]) -> list[dict]:
    """Per pretrained network: how many pretraining patients fitted it, chose its epoch and
    were excluded (usage.tsv of deep_ct_pretrain)."""
    rows = []
    for path in usage_paths:
        usage = read_tsv(path)
        counts = usage["role"].value_counts()
        rows.append({"member": Path(path).parent.name,
                     **{role: int(counts.get(role, 0))
                        for role in ("fit", "inner", "left_out", "excluded")}})
    return rows


ATTENTION_METHODS = {
    "saliency": "the networks see the scales stacked as channels, so a Grad-CAM cell would "
                "mix several places in the body: each scale's map is the saliency |d risk / "
                "d input| of that scale's own channels, on that cube's own voxels",
    "gradcam": "each network sees one scale: Grad-CAM on its second-to-last stage, each "
               "cell placed on the centre of its input window (Grad-CAM weighs activations, "
               "which follow the image: a ratio a little above 1 can come from a lesion "
               "brighter than its surroundings alone)",
}


def attention_summary(table: pd.DataFrame) -> list[dict]:
    """Per scale of gradcam.tsv (deep_ct_gradcam): the method, how many patients have a
    ratio (map's share inside the tumour / tumour's share of the cube), its median and range,
    how many are above 1 (chance), and the tumour's median share of the cube."""
    rows = []
    for _, group in table.groupby("scale", sort=False):
        ratio = pd.to_numeric(group["ratio"], errors="coerce").dropna()
        share = pd.to_numeric(group["mask_share"], errors="coerce").dropna()
        rows.append({
            "scale": f"{float(group['edge_mm'].iloc[0]):g} mm",
            "method": ", ".join(sorted(set(group["method"]))),
            "n": len(ratio),
            "median": f"{ratio.median():.2f}" if len(ratio) else "",
            "range": f"{ratio.min():.2f}–{ratio.max():.2f}" if len(ratio) else "",
            "above": int((ratio > 1).sum()),
            "share": f"{100 * share.median():.1f}%" if len(share) else "",
        })
    return rows


def attention_figures(table: pd.DataFrame, maps_dir: Path) -> list[dict]:
    """One montage per patient, captioned with its ratio in every scale."""
    figures = []
    for patient, group in table.groupby("patient_id", sort=False):
        ratios = ", ".join(
            f"{r['ratio']:.2f} ({float(r['edge_mm']):g} mm)" for r in group.to_dict("records")
            if pd.notna(r["ratio"]))
        figures.append({"patient_id": patient, "img": embed_png(maps_dir / group["file"].iloc[0]),
                        "caption": f"ratio {ratios}" if ratios else "no ratio (no mask)"})
    return figures


def attention_section(maps_dir: str | Path) -> dict:
    """The attention maps of deep_ct_gradcam: the per-scale summary, the method(s) and the
    montages; empty without maps. A gradcam.tsv of an older radpath (one map per patient,
    no ratio) shows its montages and asks for the job to be re-run."""
    maps_dir = Path(maps_dir)
    path = maps_dir / "gradcam.tsv"
    table = read_tsv(path) if path.exists() else pd.DataFrame()
    if table.empty:
        return {}
    if "scale" not in table.columns:
        return {"summary": [], "methods": [], "outdated": True,
                "figures": [{"patient_id": r["patient_id"], "img": embed_png(maps_dir / r["file"]),
                             "caption": ""} for r in table.to_dict("records")]}
    methods = sorted({m for value in table["method"] for m in str(value).split("+")})
    return {"summary": attention_summary(table), "outdated": False,
            "methods": [ATTENTION_METHODS.get(m, m) for m in methods],
            "figures": attention_figures(table, maps_dir)}


def deep_ct_section(summaries: list[str], curves: list[str], gradcam_dirs: list[str],
                    endpoints: list[str], starts: list[str] | None = None,
                    pretrain_usage: list[str] | None = None,
                    synthetic: list[str] | None = None) -> dict:
    """Per endpoint: how many patients trained, early-stopped and were scored by each fold
    model, the held-out folds' C, the training curves, the attention maps (summary per scale
    and montages) and, when the networks started from pretrained weights, validation C with
    and without them."""
    starts = starts or [None] * len(endpoints)
    synthetic = synthetic or [None] * len(endpoints)
    pretrain_usage = pretrain_usage or []
    sections = []
    for endpoint, summary, curve, maps, start, with_synthetic in zip(
            endpoints, summaries, curves, gradcam_dirs, starts, synthetic, strict=True):
        table = read_tsv(summary)
        sections.append({
            "endpoint": endpoint.upper(),
            "rows": table.to_dict("records"),
            "n_fit": f"{table['n_fit'].min()}-{table['n_fit'].max()}",
            "n_validation": int(table["n_validation"].max()),
            "curves": embed_png(curve),
            "gradcam": attention_section(maps),
            "starts": start_rows(start) if start else [],
            "synthetic": start_rows(with_synthetic, "variant") if with_synthetic else [],
            "n_synthetic": int(table["n_synthetic"].max()) if "n_synthetic" in table else 0,
            "pretrain": pretrain_rows([p for p in pretrain_usage
                                       if Path(p).parts[-3] == endpoint]),
        })
    return {"endpoints": sections}


SMALL_VALIDATION_EVENTS = 30  # fewer validation events than this: CIs are wide


def accuracy_section(accuracy_path, calibration_dir, decision_dir, keys, endpoints) -> dict:
    """Validation accuracy at the horizons (one row per endpoint x model x horizon), the
    calibration plots and the decision curves."""
    rows = []
    for r in read_tsv(accuracy_path).to_dict("records"):
        note = r["note"] if isinstance(r["note"], str) else ""
        status = status_text(r.get("status"))
        row = {"endpoint": r["endpoint"].upper(), "model": r["model"],
               "horizon": f"{r['horizon']:g}", "events": int(r["events_by_horizon"]),
               "note": note, "status": status}  # fmt: skip
        if not note and status == OK:
            row.update(
                risk=f"{r['predicted_risk']:.2f} / {r['observed_risk']:.2f}",
                auc=fmt_ci(r["auc"], r["auc_lo"], r["auc_hi"]),
                brier=fmt_ci(r["brier"], r["brier_lo"], r["brier_hi"]),
                brier_null=f"{r['brier_null']:.3f}",
                ipa=fmt_ci(r["ipa"], r["ipa_lo"], r["ipa_hi"]),
                ibs=fmt_ci(r["ibs"], r["ibs_lo"], r["ibs_hi"]),
                slope=fmt_ci(r["slope"], r["slope_lo"], r["slope_hi"]),
                log_oe=fmt_ci(r["log_oe"], r["log_oe_lo"], r["log_oe_hi"]),
            )
        rows.append(row)
    return {
        "rows": rows,
        "calibration": [
            {"endpoint": e.upper(), "model": m,
             "img": embed_png(Path(calibration_dir) / f"{e}_{m}.png")}
            for e, m in keys
        ],  # fmt: skip
        "decision": [
            {"endpoint": e.upper(), "img": embed_png(Path(decision_dir) / f"{e}.png")}
            for e in endpoints
        ],
    }


def _per_variable(value: float) -> str:
    return f"{value:.1f}" if value >= 1 else f"{value:.2g}"


def model_check_rows(model_files: dict[tuple[str, str], str]) -> list[dict]:
    """Per endpoint x model: events per variable and the proportional-hazards test."""
    rows = []
    for (endpoint, model), path in model_files.items():
        checks = read_json(path).get("checks") or {}
        if not checks:
            continue
        tests = checks.get("proportional_hazards") or []
        violated = [f"{t['feature']} (p={fmt_p(t['p'])})" for t in tests if t["p"] < 0.05]
        if checks.get("proportional_hazards_note"):
            ph = checks["proportional_hazards_note"]
        elif not tests:
            ph = "no feature"
        else:
            ph = "; ".join(violated) if violated else f"none of {len(tests)} (all p >= 0.05)"
        rows.append({
            "endpoint": endpoint.upper(), "model": model,
            "events": checks["training_events"], "candidates": checks["candidate_variables"],
            "epv": _per_variable(checks["events_per_candidate"]),
            "final": checks["final_variables"],
            "epv_final": _per_variable(checks["events_per_final_variable"]), "ph": ph,
        })  # fmt: skip
    return rows


def caveats(cindex: pd.DataFrame, reference: str) -> dict:
    """Plain statements of how far the validation numbers can be trusted; the comparisons
    count the models with a result of their own only."""
    validation = cindex[cindex["cohort"] == "validation"]
    if validation.empty:
        return {"small": [], "n_comparisons": 0}
    by_endpoint = validation.groupby("endpoint").agg(n=("n", "max"), events=("events", "max"))
    small = [
        {"endpoint": e.upper(), "n": int(r.n), "events": int(r.events)}
        for e, r in by_endpoint.iterrows()
        if r.events < SMALL_VALIDATION_EVENTS
    ]
    compared = validation[validation["model"] != reference]
    if "status" in compared.columns:
        # Nothing is compared with a reference that has no result of its own.
        reference_ok = validation.loc[validation["model"] == reference, "status"].map(has_result)
        compared = compared[compared["status"].map(has_result) & reference_ok.all()]
    return {"small": small, "n_comparisons": int(len(compared))}


def provenance(workflow_dir: str | Path, sheets: dict[str, str]) -> dict:
    """radpath's version and commit, the date, and the input sheets with their SHA-256."""
    workflow_dir = Path(workflow_dir)
    version = "unknown"
    pyproject = workflow_dir / "pyproject.toml"
    if pyproject.is_file():
        match = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(encoding="utf-8"), re.M)
        version = match.group(1) if match else version
    commit = _git(workflow_dir, "rev-parse", "--short=12", "HEAD")
    if commit and _git(workflow_dir, "status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    inputs = []
    for name, path in sheets.items():
        if path and Path(path).is_file():
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
            inputs.append({"name": name, "path": str(path), "sha256": digest})
    return {
        "version": version,
        "commit": commit or "unknown (not a git checkout)",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "inputs": inputs,
    }


def _git(folder: Path, *args: str) -> str:
    try:
        result = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True,
            encoding="utf-8", timeout=10, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def step_label(step: str) -> str:
    return STEP_LABELS.get(step, step)


def emptied_sentence(block: str, where: dict) -> str:
    """'radiomics: univariable Cox filter kept 0 of 812'."""
    return f"{block}: {step_label(where['step'])} kept {where['n_out']} of {where['n_in']}"


def block_count_rows(counts: pd.DataFrame, steps: list[str]) -> list[dict]:
    """Per block: its columns, the count after each of ``steps`` ("" where the step does not
    apply to it: forced columns skip the filters) and the step that left it empty."""
    emptied = where_emptied(counts)
    rows = []
    for block, part in counts.groupby("block", sort=False):
        after = dict(zip(part["step"], part["n_out"], strict=True))
        rows.append({
            "block": block, "columns": int(part["n_in"].iloc[0]),
            "counts": [after.get(step, "") for step in steps],
            "emptied": emptied_sentence(block, emptied[block]) if block in emptied else "",
        })  # fmt: skip
    return rows


def selection_section(model: FittedModel, log: pd.DataFrame, endpoint: str, name: str,
                      status: str) -> dict:
    """One model's feature selection: per block the count after each step and where a block
    lost its last column (models fitted before radpath counted them: the log only), and the
    selection log (selection.tsv) with its notes."""
    counts = model.selection_by_block
    recorded = set(counts["step"])
    steps = [step for step in STEP_LABELS if step in recorded]  # in the pipeline's order
    steps += sorted(recorded.difference(steps))
    blocks = block_count_rows(counts, steps) if len(counts) else []
    return {
        "endpoint": endpoint.upper(), "model": name, "status": status,
        "steps": [step_label(step) for step in steps], "blocks": blocks,
        "emptied": [b["emptied"] for b in blocks if b["emptied"]],
        "rows": log.fillna("").to_dict("records"),
    }  # fmt: skip


def selection_sections(model_files: dict[tuple[str, str], str],
                       log_files: dict[tuple[str, str], str],
                       statuses: dict[tuple[str, str], str]) -> list[dict]:
    return [
        selection_section(FittedModel.from_dict(read_json(path)), read_tsv(log_files[key]),
                          key[0], key[1], statuses.get(key, OK))
        for key, path in model_files.items()
    ]


def cohort_summary(outcomes: pd.DataFrame) -> list[dict]:
    """Per split: patients, and per endpoint of the outcomes table its events and median
    follow-up time."""
    endpoints = outcome_endpoints(outcomes)
    rows = []
    for split, part in outcomes.groupby("split"):
        rows.append({
            "split": split,
            "n": len(part),
            "endpoints": [
                {
                    "name": endpoint.upper(),
                    "events": int(part[f"{endpoint}_event"].sum()),
                    "median_followup": float(part[f"{endpoint}_time"].median()),
                }
                for endpoint in endpoints
            ],
        })
    return rows


def patient_flow(outcomes: pd.DataFrame, radiomics_excluded: pd.DataFrame,
                 pathomics_excluded: pd.DataFrame | None,
                 slide_patients: dict[str, str]) -> list[dict]:
    """From the sheets to the patients each kind of model analyses, per split with events:
    who was excluded and why (CT/mask input errors), who lacks a usable slide."""
    endpoints = outcome_endpoints(outcomes)

    def step(label: str, ids) -> dict:
        part = outcomes.loc[outcomes.index.intersection(list(ids))]
        row = {"step": label}
        for split in ("train", "validation"):
            in_split = part[part["split"] == split]
            events = ", ".join(f"{e.upper()} {int(in_split[f'{e}_event'].sum())}"
                               for e in endpoints)  # fmt: skip
            row[split] = f"{len(in_split)} ({events} events)"
        return row

    everyone = outcomes.index
    rows = [step("in the sheets (the clinical model analyses all of them)", everyone)]
    excluded = radiomics_excluded.astype({"patient_id": str})
    for reason, part in excluded.groupby("reason", sort=True):
        rows.append(step(f"excluded from the CT models: {reason}", part["patient_id"]))
    ct_patients = everyone.difference(excluded["patient_id"])
    rows.append(step("analysed by the CT models (radiomics, deep CT)", ct_patients))
    if slide_patients:
        bad = set(pathomics_excluded["slide_id"]) if pathomics_excluded is not None else set()
        usable = {patient for slide, patient in slide_patients.items() if slide not in bad}
        rows.append(step("without a usable slide", everyone.difference(list(usable))))
        rows.append(step("analysed by the pathomics models", usable))
    return rows


def missing_features_summary(missing: pd.DataFrame, policy: str) -> dict:
    """The radiomics features some patients lack (results/cohort/radiomics_missing.tsv): how
    many, what became of them under radiomics.missing_features, and per patient which."""
    if missing.empty:
        return {}
    per_patient = [
        {"patient_id": patient, "n": len(part),
         "types": ", ".join(f"{kind} ({n})" for kind, n in
                            part["image_type"].value_counts(sort=False).items())}
        for patient, part in missing.astype({"patient_id": str}).groupby("patient_id")
    ]
    actions = missing.groupby("action")["feature"].nunique()
    return {"policy": policy, "n_features": int(missing["feature"].nunique()),
            "n_values": len(missing), "patients": per_patient,
            "actions": [{"action": a, "n_features": int(n)} for a, n in actions.items()]}


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


def validation_section(config: dict, repeated_cv, outcomes: pd.DataFrame) -> dict:
    """How the models were validated: one split, or also repeated CV (its table and plot,
    and the models it could not refit)."""
    from radpath.inputs.configuration import cross_validated_models

    section = {"method": config["validation"]["method"], "n": len(outcomes),
               "n_validation": int((outcomes["split"] == "validation").sum()),
               "rows": [], "plot": "", "skipped": {}}
    if section["method"] != "repeated_cv" or not repeated_cv:
        return section
    table_path, plot_path = repeated_cv
    for r in read_tsv(table_path).to_dict("records"):
        section["rows"].append({
            "endpoint": r["endpoint"].upper(), "model": r["model"], "n": int(r["n"]),
            "events": int(r["events"]), "mean": f"{r['mean_c']:.3f}",
            "ci": "" if pd.isna(r["ci_lo"]) else f"{r['ci_lo']:.3f}–{r['ci_hi']:.3f}",
            "range": f"{r['repeat_lo']:.3f}–{r['repeat_hi']:.3f}",
            "sd": "" if pd.isna(r["repeat_sd"]) else f"{r['repeat_sd']:.3f}",
            "fits": f"{int(r['fits']) - int(r['failed'])} of {int(r['fits'])}",
            "failures": r["failures"] if isinstance(r["failures"], str) else "",
        })
    section["plot"] = embed_png(plot_path)
    section["skipped"] = cross_validated_models(
        {m: config["models"][m] for m in config["models"]})[1]
    return section


def render_html(template_path, context: dict, out_path) -> None:
    """A Jinja2 template (autoescaped) rendered to `out_path`, atomically."""
    template = jinja2.Template(Path(template_path).read_text(encoding="utf-8"), autoescape=True)
    with atomic_write(out_path) as handle:
        handle.write(template.render(**context))


def layouts_qc_summary(path: str) -> dict:
    """The synthesis patients' lungs (results/synthesis/layouts_qc.tsv): volume range, how
    many the field of view cuts, and the flagged patients with the reason."""
    table = read_tsv(path).fillna({"lungs_cut_by": "", "flag": ""})
    volumes = table["lungs_ml"].dropna()
    return {"n": len(table),
            "ml_range": f"{volumes.min():.0f} to {volumes.max():.0f}" if len(volumes) else "",
            "n_cut": int((table["lungs_cut_by"] != "").sum()),
            "flagged": table.loc[table["flag"] != "", ["patient_id", "flag"]].to_dict("records")}


def synthesis_section(quality: str, figure: str, loss: str, model_meta: dict,
                      layouts_qc: str | None = None) -> dict:
    """The synthesis section: quality rows (synthetic vs reference), figure, loss curve, and
    the layout QC (lung volumes, flags)."""
    table = read_tsv(quality)
    rows = []
    for r in table.to_dict("records"):
        if r["section"] == "radiomics":
            rows.append({"description": f"radiomics: {r['description']}",
                         "value": f"{r['synthetic_vs_real']:.3f} (synthetic vs real)",
                         "reference": f"{r['real_half_vs_half']:.3f} (real half vs half)",
                         "n": f"{int(r['n_synthetic'])} synthetic, {int(r['n_real'])} real, "
                              f"{int(r['n_features'])} features"})
        else:
            sd = "" if pd.isna(r["sd"]) else f" (SD {r['sd']:.3g})"
            rows.append({"description": f"held-out reconstructions: {r['description']}",
                         "value": f"{r['mean']:.3g}{sd}", "reference": "",
                         "n": f"{int(r['n_volumes'])} volumes"})
    return {"rows": rows, "figure": embed_png(figure), "loss": embed_png(loss),
            "lungs": layouts_qc_summary(layouts_qc) if layouts_qc else {},
            "reference_splits": int(table["reference_splits"].max())
            if "reference_splits" in table.columns and table["reference_splits"].notna().any()
            else 0, **model_meta}


def render_report(
    inputs,
    endpoints: list[str],
    models: list[str],
    config: dict,
    out_path,
    slides: dict[str, str] | None = None,
    slide_patients: dict[str, str] | None = None,
    workflow_dir: str | Path | None = None,
    synthesis_meta: dict | None = None,
):
    keys = list(itertools.product(endpoints, models))
    slides = slides or {}
    cindex = read_tsv(inputs.cindex)
    statuses = model_statuses(cindex)
    outcomes = read_tsv(inputs.outcomes, index_col="patient_id")
    excluded = read_tsv(inputs.excluded)
    km_dir = Path(inputs.km)
    context = {
        "config": config,
        "cohort": cohort_summary(outcomes),
        "flow": patient_flow(
            outcomes, excluded,
            read_tsv(inputs.pathomics_excluded[0]) if slides else None,
            {s: slide_patients[s] for s in slides} if slides else {},
        ),
        "excluded": excluded.to_dict("records"),
        "missing_features": missing_features_summary(
            read_tsv(inputs.radiomics_missing), config["radiomics"]["missing_features"]),
        "imputation": [
            r for r in read_tsv(inputs.imputation).to_dict("records")
            if r["n_train_filled"] or r["n_validation_filled"]
        ],
        "slides": slide_gallery(slides, slide_patients or {}),
        "n_slides": len(slides),
        "slide_excluded": (
            read_tsv(inputs.pathomics_excluded[0]).to_dict("records")
            if slides else []
        ),
        "encoder": (
            read_json(inputs.pathomics_encoder[0])
            if slides and getattr(inputs, "pathomics_encoder", None) else {}
        ),
        "pathosig": (
            pathosig_section(
                inputs.pathosig_mosaics_table[0], inputs.pathosig_mosaics[0],
                inputs.pathosig_history[0], dict(zip(keys, inputs.coefficients, strict=True)),
                config["models"],
            )
            if getattr(inputs, "pathosig_mosaics_table", None) else {}
        ),
        "treatment": (
            treatment_section(inputs.treatment_benefit[0], inputs.treatment_plots[0],
                              config["treatment"]["column"])
            if getattr(inputs, "treatment_benefit", None) else {}
        ),
        "deep_ct": (
            deep_ct_section(inputs.deep_ct_summary, inputs.deep_ct_curves,
                            inputs.deep_ct_gradcam, endpoints,
                            getattr(inputs, "deep_ct_starts", None),
                            getattr(inputs, "deep_ct_pretrain_usage", None),
                            getattr(inputs, "deep_ct_synthetic", None))
            if getattr(inputs, "deep_ct_summary", None) else {}
        ),
        "synthesis": (
            synthesis_section(inputs.synthesis_quality[0], inputs.synthesis_figure[0],
                              inputs.synthesis_loss[0], synthesis_meta,
                              inputs.synthesis_layouts_qc[0])
            if getattr(inputs, "synthesis_quality", None) else {}
        ),
        "accuracy": accuracy_section(inputs.accuracy, inputs.calibration_plots,
                                     inputs.decision_plots, keys, endpoints),
        "validation": validation_section(config, getattr(inputs, "repeated_cv", None), outcomes),
        "checks": model_check_rows(dict(zip(keys, inputs.models, strict=True))),
        "performance": performance_rows(cindex, config["reference_model"]),
        "left_out": left_out_models(statuses),
        "caveats": caveats(cindex, config["reference_model"]),
        "provenance": provenance(
            workflow_dir or Path(inputs.template).parents[2],  # resources/report/ -> workflow
            {"patients": config["patients"], "clinical": config["clinical"],
             "slides": config.get("slides", "")},
        ),
        "forest": embed_png(inputs.forest),
        "km": km_figures(km_dir, keys, statuses),
        "km_missing": constant_risk_models(statuses),
        "pca": embed_png(inputs.pca),
        "batch": batch_summary(read_tsv(inputs.batch_tests)),
        "coefficients": coefficient_tables(dict(zip(keys, inputs.coefficients, strict=True))),
        "selection": selection_sections(dict(zip(keys, inputs.models, strict=True)),
                                        dict(zip(keys, inputs.selection, strict=True)), statuses),
        "models": [{"name": m, "description": MODEL_DESCRIPTIONS.get(m, ""),
                    **config["models"][m]} for m in models],
    }
    render_html(inputs.template, context, out_path)


def censoring_source(*tables: pd.DataFrame) -> str:
    """Whose censoring distribution weighted the IPCW metrics of these tables (their
    `censoring` column); a table written before radpath recorded it used the training
    patients'."""
    sources = {value for table in tables
               for value in (table["censoring"] if "censoring" in table.columns
                             else [TRAINING_CENSORING])
               if isinstance(value, str) and value}
    return " and ".join(sorted(sources)) or TRAINING_CENSORING


def uno_truncation(cindex: pd.DataFrame) -> list[dict]:
    """Uno's truncation time tau of each endpoint (the `tau` column of cindex.tsv)."""
    taus = cindex.dropna(subset=["tau"]).groupby("endpoint", sort=False)["tau"].first()
    return [{"endpoint": endpoint.upper(), "tau": f"{tau:.3g}"} for endpoint, tau in taus.items()]


def render_external_report(
    cohort: str,
    inputs,
    endpoints: list[str],
    models: list[str],
    unscored: dict[str, str],
    config: dict,
    out_path,
) -> None:
    """The external-validation report of one cohort (`snakemake score`): who was scored,
    how each scanner was harmonized, and the run's metrics on this cohort."""
    keys = list(itertools.product(endpoints, models))
    cindex = read_tsv(inputs.cindex)
    statuses = model_statuses(cindex)
    outcomes = read_tsv(inputs.outcomes, index_col="patient_id")
    excluded = [
        {"block": block, "slide_id": "", **row}
        for block, paths in (("CT", inputs.radiomics_excluded), ("slides", inputs.pathomics_excluded))
        for path in paths
        for row in read_tsv(path).fillna("").to_dict("records")
    ]
    spec = config["score"]["cohorts"][cohort]
    context = {
        "censoring": censoring_source(cindex, read_tsv(inputs.accuracy)),
        "truncation": uno_truncation(cindex),
        "name": cohort,
        "config": config,
        "cohort": cohort_summary(outcomes),
        "excluded": excluded,
        "imputation": [r for r in read_tsv(inputs.imputation).to_dict("records") if r["n_filled"]],
        "batches": (read_tsv(inputs.batches[0]).to_dict("records") if inputs.batches else []),
        "unscored": unscored,
        "performance": performance_rows(cindex, config["reference_model"]),
        "left_out": left_out_models(statuses),
        "caveats": caveats(cindex.assign(cohort="validation"), config["reference_model"]),
        "forest": embed_png(inputs.forest),
        "km": km_figures(Path(inputs.km), keys, statuses),
        "km_missing": constant_risk_models(statuses),
        "accuracy": accuracy_section(inputs.accuracy, inputs.calibration_plots,
                                     inputs.decision_plots, keys, endpoints),
        "provenance": provenance(
            Path(inputs.template).parents[2],
            {"patients": spec["patients"], "clinical": spec["clinical"],
             "slides": spec.get("slides", "")},
        ),
        "models": [{"name": m, "description": MODEL_DESCRIPTIONS.get(m, ""),
                    **config["models"][m]} for m in models],
    }
    render_html(inputs.template, context, out_path)
