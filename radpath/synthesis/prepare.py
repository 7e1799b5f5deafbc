"""The synthesis layout, made by the per-patient CT job (rule ct_patient, envs/radiomics.yaml):
a patient's CT and tumour mask read and checked as for radiomics (radpath.inputs.ct), lungs
from the mask's lung label or segmented, and the files the GPU jobs read: the model grid's
CT and layout (.npz), the layout and the CT on the CT's own grid (NIfTI)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Mapping

import numpy as np
import SimpleITK as sitk

from radpath.inputs.ct import load_checked_case
from radpath.inputs.io import atomic_path
from radpath.synthesis.layout import (
    NODULE,
    NODULE_SEARCH_MM,
    LayoutError,
    lung_facts,
    lungs_from_label,
    make_layout,
    model_grid,
    resample,
    segment_lungs,
    window_to_unit,
    write_image,
)

log = logging.getLogger(__name__)


def layout_job(*, images: Mapping, lung_label: str, settings: Mapping, npz_out: str,
               layout_out: str, ct_out: str) -> None:
    """CT + tumour mask (+ lungs) -> the patient's layout files, and the CT as read (NIfTI:
    the GPU jobs read it without the DICOM and pyradiomics stack)."""
    patient = images["patient_id"]
    case = load_checked_case(**images)
    ct = case.image
    nodule = sitk.GetArrayFromImage(case.mask).astype(bool)
    if lung_label.strip():
        lungs = lungs_from_label(images["mask_path"], int(float(lung_label)), ct, patient)
        source = f"mask label {int(float(lung_label))}"
    else:
        search = segment_lungs(ct, settings["lungs"])
        lungs = search.lungs
        source = "segmented from the CT"
        if not lungs.any():
            raise LayoutError(f"patient {patient}: CT {images['ct_path']}: no lung found "
                              f"({search.describe(settings['lungs'])}); set lung_label in "
                              "the patients sheet, or synthesis.lungs")
    layout = make_layout(nodule, lungs)
    layout_image = sitk.GetImageFromArray(layout)
    layout_image.CopyInformation(ct)
    grid = model_grid(ct, case.mask, settings)
    hu = resample(ct, grid, labels=False, default=float(settings["window"][0]))
    model_layout = resample(layout_image, grid, labels=True)
    if not (model_layout == NODULE).any():
        raise LayoutError(f"patient {patient}: mask {images['mask_path']}: the nodule "
                             f"vanishes on the {settings['size']}^3 model grid (spacing "
                             f"{', '.join(f'{s:.2f}' for s in grid.spacing)} mm)")
    facts = lung_facts(lungs, nodule, ct.GetSpacing())
    log.info("patient %s: lungs %s (%.1f ml%s), nodule %d voxels, %s mm from the nearest "
             "lung; model grid %s mm", patient, source, facts["lungs_ml"],
             f", cut by the field of view at its {facts['lungs_cut_by']}"
             if facts["lungs_cut_by"] else "", int(nodule.sum()),
             f"{facts['nodule_to_lung_mm']:.1f}" if np.isfinite(facts["nodule_to_lung_mm"])
             else f"more than {NODULE_SEARCH_MM:g}",
             ", ".join(f"{s:.2f}" for s in grid.spacing))
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, ct=window_to_unit(hu, settings["window"]).astype(np.float16),
        layout=model_layout.astype(np.uint8), grid=json.dumps(grid.as_dict()),
        lungs_source=source, patient_id=patient, lungs=json.dumps(facts),
    )
    with atomic_path(npz_out) as tmp:
        tmp.write_bytes(buffer.getvalue())
    write_image(layout_image, layout_out)
    write_image(ct, ct_out)
