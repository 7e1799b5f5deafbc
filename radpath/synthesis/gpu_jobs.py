"""The jobs of the synthesis branch (rules/diffusion.smk): per-patient layouts, DDPM
training on the synthesis patients, one sampling job per (variant, patient, draw).

Files: results/synthesis/layouts/{patient}.npz (the model grid's CT in [-1, 1], layout and
grid) and {patient}_layout.nii.gz (the layout on the CT's grid);
results/synthesis/model.pt; results/synthesis/samples/{variant}/{patient}/draw{k}_ct.nii.gz
with its nodule mask (label 1) and layout beside it, on the source CT's grid.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from radpath.inputs.io import atomic_path, write_tsv
from radpath.inputs.runtime import exclusion_reason, write_exclusion
from radpath.nn.training import derive_seed
from radpath.synthesis import diffusion
from radpath.synthesis.layout import (
    NODULE,
    Grid,
    compose,
    region_mask,
    resample,
    transform_layout,
    unit_to_window,
    write_image,
)

log = logging.getLogger(__name__)


def read_layout(path: str) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return {"ct": data["ct"].astype(np.float32), "layout": data["layout"],
                "grid": Grid.from_dict(json.loads(str(data["grid"]))),
                "lungs_source": str(data["lungs_source"]),
                "patient_id": str(data["patient_id"])}


def usable_layouts(paths: Sequence[str]) -> tuple[dict[str, str], list[dict]]:
    """{patient: layout.npz} of the usable layouts, and [{patient_id, reason}] of the rest."""
    usable, excluded = {}, []
    for path in paths:
        patient = path.rsplit("/", 1)[-1].removesuffix(".npz")
        reason = exclusion_reason(path)
        if reason is None:
            usable[patient] = path
        else:
            excluded.append({"patient_id": patient, "reason": reason})
    return usable, excluded


def train_job(*, layout_paths: Sequence[str], settings: Mapping, seed: int,
              checkpoint_dir: str, threads: int, model_out: str, history_out: str,
              plot_out: str) -> None:
    torch.set_num_threads(max(1, int(threads)))
    usable, excluded = usable_layouts(layout_paths)
    if not usable:
        raise ValueError("synthesis: no usable layout among the synthesis patients")
    for row in excluded:
        log.warning("synthesis: patient %s left out: %s", row["patient_id"], row["reason"])
    ids = sorted(usable)
    data = [read_layout(usable[p]) for p in ids]
    trained = diffusion.train_ddpm(
        np.stack([d["ct"] for d in data]), np.stack([d["layout"] for d in data]), settings,
        derive_seed(seed, "synthesis"), patient_ids=ids, checkpoint_dir=checkpoint_dir,
        checkpoint_every=int(settings["checkpoint_every"]),
    )
    diffusion.save_model(model_out, trained, {"excluded": excluded})
    write_tsv(trained.history, history_out, index=False)
    plot_loss(trained.history, plot_out)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)


def plot_loss(history, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(history["step"], history["loss"], marker="o", ms=2)
    ax.set(xlabel="training step", ylabel="L1 noise loss", title="Synthesis DDPM training")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def sample_job(*, patient: str, ct_path: str, layout_npz: str,
               layout_image: str, model_path: str, variant: str, draw: int,
               settings: Mapping, seed: int, threads: int, outputs: Sequence[str]) -> None:
    """One synthetic volume: `outputs` = (ct, mask, layout) NIfTI paths on the CT's grid."""
    for upstream in (layout_npz, layout_image, ct_path):
        reason = exclusion_reason(upstream)
        if reason is not None:
            log.warning("excluded %s: %s", patient, reason)
            write_exclusion(patient, "patient_id", reason, list(outputs))
            return
    torch.set_num_threads(max(1, int(threads)))
    trained = diffusion.load_model(model_path)
    prepared = read_layout(layout_npz)
    grid = prepared["grid"]
    ct = sitk.ReadImage(ct_path)
    source = sitk.ReadImage(layout_image)
    spacing = source.GetSpacing()
    layout, old_nodule = transform_layout(
        sitk.GetArrayFromImage(source), spacing, variant, settings["fresh"],
        f"patient {patient} ({layout_image})")
    region = region_mask(layout, spacing, settings["region"], float(settings["margin_mm"]),
                         extra=old_nodule)
    fresh_layout = sitk.GetImageFromArray(layout.astype(np.uint8))
    fresh_layout.CopyInformation(source)
    region_image = sitk.GetImageFromArray(region.astype(np.uint8))
    region_image.CopyInformation(source)
    model_layout = resample(fresh_layout, grid, labels=True)
    model_region = resample(region_image, grid, labels=True).astype(bool)
    draw_seed = derive_seed(seed, "synthesis-sample", patient, variant, int(draw))
    log.info("patient %s, %s layout, draw %d: sampling %d steps, %d of %d model voxels drawn "
             "(seed %d)", patient, variant, draw, settings["sampling_steps"],
             int(model_region.sum()), model_region.size, draw_seed)
    drawn = diffusion.sample_volume(trained, model_layout, prepared["ct"], model_region,
                                    steps=int(settings["sampling_steps"]), seed=draw_seed)
    synthetic = grid.image(unit_to_window(drawn, settings["window"]))
    result = compose(ct, synthetic, region)
    nodule = sitk.GetImageFromArray((layout == NODULE).astype(np.uint8))
    nodule.CopyInformation(source)
    write_image(result, outputs[0])
    write_image(nodule, outputs[1])
    write_image(fresh_layout, outputs[2])


def _feature_rows(paths: Mapping[str, str]) -> tuple:
    """{label: features.tsv} -> (numeric table by label, [{label, reason}] excluded)."""
    import pandas as pd

    from radpath.inputs.io import read_tsv

    rows, excluded = {}, []
    for label, path in paths.items():
        table = read_tsv(path)
        if "error" in table.columns:
            excluded.append({"volume": label, "reason": str(table["error"].iloc[0])})
            continue
        numeric = table.drop(columns=[c for c in table.columns if c == "patient_id"])
        rows[label] = pd.to_numeric(numeric.iloc[0], errors="coerce")
    return pd.DataFrame(rows).T, excluded


def quality_job(*, heldout: Sequence[Mapping], real_features: Mapping[str, str],
                synthetic_features: Mapping[str, str], pairs: Sequence[Mapping],
                settings: Mapping, seed: int, quality_out: str, volumes_out: str,
                ks_out: str, figure_out: str) -> None:
    """The quality table. `heldout`: [{patient, draw, ct, synthetic, layout}]; `pairs`:
    [{label, ct, synthetic, layout}] for the figure (ct: the layout job's copy)."""
    import pandas as pd

    from radpath.synthesis import quality as quality

    window = settings["window"]
    volume_rows = []
    for item in heldout:
        if exclusion_reason(item["synthetic"]) is not None:
            continue
        real = sitk.GetArrayFromImage(sitk.ReadImage(item["ct"]))
        synthetic = sitk.GetArrayFromImage(sitk.ReadImage(item["synthetic"]))
        layout = sitk.GetArrayFromImage(sitk.ReadImage(item["layout"]))
        metrics = quality.voxel_metrics(real, synthetic, layout > 0, window)
        volume_rows.append({"patient_id": item["patient"], "draw": item["draw"], **metrics})
    volumes = pd.DataFrame(volume_rows, columns=["patient_id", "draw", "mae_hu", "psnr_db",
                                                 "ssim"])
    tables = []
    if len(volumes):
        tables.append(quality.voxel_summary(volumes))
    real, real_excluded = _feature_rows(real_features)
    synthetic, synthetic_excluded = _feature_rows(synthetic_features)
    per_feature = pd.DataFrame(columns=["feature", "ks_synthetic_vs_real"])
    try:
        summary, per_feature = quality.radiomics_realism(real, synthetic,
                                                         derive_seed(seed, "realism"))
        tables.append(summary)
    except ValueError as error:
        log.warning("synthesis quality: radiomics realism not computed: %s", error)
    for row in real_excluded + synthetic_excluded:
        log.warning("synthesis quality: %s left out: %s", row["volume"], row["reason"])
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(
        columns=["section", "metric", "description"])
    write_tsv(table, quality_out, index=False)
    write_tsv(volumes, volumes_out, index=False)
    write_tsv(per_feature, ks_out, index=False)
    shown = []
    for pair in pairs:
        if exclusion_reason(pair["synthetic"]) is not None:
            continue
        shown.append({
            "label": pair["label"],
            "real": sitk.GetArrayFromImage(sitk.ReadImage(pair["ct"])),
            "synthetic": sitk.GetArrayFromImage(sitk.ReadImage(pair["synthetic"])),
            "layout": sitk.GetArrayFromImage(sitk.ReadImage(pair["layout"])),
        })
    quality.plot_pairs(shown, figure_out, window)
