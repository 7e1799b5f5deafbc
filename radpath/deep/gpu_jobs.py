"""The GPU jobs of the deep CT models (rules deep_ct_pretrain, deep_ct_train,
deep_ct_gradcam): read the cube files and the folds, call radpath.deep's training and
attention maps (Grad-CAM, saliency), write the outputs."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch

from radpath.deep import cohort as deep_cohort
from radpath.deep import gradcam, networks
from radpath.deep import training as deep_training
from radpath.deep.cohort import read_folds
from radpath.deep.cube_files import (
    Cubes,
    channel_indices,
    ct_grid_image,
    cube_image,
    edge_label,
    read_cubes,
)
from radpath.inputs.io import atomic_path, read_tsv, write_tsv
from radpath.inputs.runtime import exclusion_reason
from radpath.nn import training as nn_training

log = logging.getLogger(__name__)


def patient_of(path: str) -> str:
    return Path(path).name.removesuffix(".npz")


def load_cube_array(paths: Mapping[str, str], ids: Sequence[str],
                    edges_mm: Sequence[float] | None) -> tuple[np.ndarray, list[str]]:
    """(N, C, G, G, G) float16 cubes of `ids` (the member's scales only) and channel names."""
    arrays, channels = [], None
    for pid in ids:
        cubes = read_cubes(paths[pid])
        keep = channel_indices(cubes.channels, edges_mm)
        names = [str(cubes.channels[i]) for i in keep]
        if channels is None:
            channels = names
        elif names != channels:
            raise ValueError(f"patient {pid}: cube channels {names} differ from {channels} "
                             f"({paths[pid]}); re-run ct_cubes for every patient")
        arrays.append(cubes.cube[keep])
    return np.stack(arrays), channels or []


def load_synthetic_cubes(paths: Sequence[str], edges_mm: Sequence[float] | None,
                         channels: Sequence[str]) -> dict[str, np.ndarray]:
    """{patient: (S, C, G, G, G)} cubes of the synthetic CTs made from the patient's layout
    (results/synthesis/cubes/real/<patient>/draw<k>.npz; excluded ones skipped)."""
    by_patient: dict[str, list[np.ndarray]] = {}
    for path in sorted(paths):
        patient = Path(path).parent.name
        reason = exclusion_reason(path)
        if reason is not None:
            log.warning("synthetic CT %s left out: %s", path, reason)
            continue
        cubes = read_cubes(path)
        keep = channel_indices(cubes.channels, edges_mm)
        names = [str(cubes.channels[i]) for i in keep]
        if names != list(channels):
            raise ValueError(f"synthetic CT {path}: cube channels {names} differ from the "
                             f"patients' {list(channels)}")
        by_patient.setdefault(patient, []).append(cubes.cube[keep])
    if by_patient:
        log.info("synthetic CTs of %d patients (%d volumes) join their fit folds",
                 len(by_patient), sum(len(v) for v in by_patient.values()))
    return {p: np.stack(v) for p, v in by_patient.items()}


def train_fold_job(*, endpoint: str, member: str, fold: int, member_spec: Mapping,
                   settings: Mapping, seed: int, folds_path: str, outcomes_path: str,
                   cube_paths: Sequence[str], init_path: str | None, checkpoint_dir: str,
                   outputs, threads: int, synthetic_paths: Sequence[str] = ()) -> None:
    torch.set_num_threads(max(1, int(threads)))
    folds = read_folds(folds_path)
    outcomes = read_tsv(outcomes_path, index_col="patient_id")
    usable = folds[folds["excluded"] == ""]
    ids = list(usable.index)
    validation = list(usable.index[usable["split"] == "validation"])
    paths = {patient_of(p): p for p in cube_paths}
    cubes, channels = load_cube_array(paths, ids, member_spec["edges_mm"])
    synthetic = load_synthetic_cubes(synthetic_paths, member_spec["edges_mm"], channels)
    network = member_spec["network"]
    init_state = (
        networks.load_init_checkpoint(init_path, network, len(channels), settings["width"])
        if init_path else None
    )
    device = nn_training.resolve_device(None)
    log.info("%s %s fold %d: %d patients (%d validation), channels %s, on %s, starting from "
             "%s", endpoint, member, fold, len(ids), len(validation), ", ".join(channels),
             device, init_path or "random weights")
    result = deep_training.train_fold(
        cubes, ids, outcomes.loc[ids, f"{endpoint}_time"].to_numpy(float),
        outcomes.loc[ids, f"{endpoint}_event"].to_numpy(int),
        {pid: int(f) for pid, f in usable["fold"].items()}, fold,
        settings, nn_training.derive_seed(seed, endpoint), member=member, network=network,
        channels=channels, validation_ids=validation, checkpoint_dir=checkpoint_dir,
        init_state=init_state, device=device, seed_name=member_spec.get("compares"),
        synthetic_cubes=synthetic,
    )
    deep_training.save_member(outputs.model, result.trained,
                        {"endpoint": endpoint, "init": init_path or ""})
    write_tsv(result.history, outputs.history, index=False)
    write_tsv(result.scores, outputs.scores, index=False)
    write_tsv(result.usage, outputs.usage, index=False)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)


def pretrain_job(*, endpoint: str, member: str, member_spec: Mapping, settings: Mapping,
                 epochs: int, seed: int, clinical_path: str, columns: Mapping[str, str],
                 cube_paths: Sequence[str], checkpoint_dir: str, outputs,
                 threads: int) -> None:
    """Train one network on the whole pretraining cohort (deep_training.pretrain): the epoch is
    chosen on an inner part of that cohort, never on the run's patients. The member file it
    writes is the start (`init_path`) of the endpoint's fold models; usage.tsv lists each
    pretraining patient's role (fit, inner, left_out; excluded patients with the reason)."""
    torch.set_num_threads(max(1, int(threads)))
    clinical = read_tsv(clinical_path, index_col="patient_id")
    paths = {patient_of(p): p for p in cube_paths}
    reasons = {pid: exclusion_reason(path) for pid, path in paths.items()}
    ids = sorted(pid for pid, reason in reasons.items() if not reason)
    time = pd.to_numeric(clinical.loc[ids, columns["time"]]).to_numpy(float)
    event = pd.to_numeric(clinical.loc[ids, columns["event"]]).to_numpy(int)
    if len(ids) < 4 or event.sum() < 2:
        raise ValueError(f"deep_training.pretrain ({clinical_path}): {endpoint} needs at least 4 "
                         f"usable patients and 2 events, got {len(ids)} and {int(event.sum())}")
    cubes, channels = load_cube_array(paths, ids, member_spec["edges_mm"])
    settings = deep_training.training_settings({**settings, "epochs": int(epochs)})
    member_seed = nn_training.derive_seed(seed, "pretrain", endpoint, member)
    fit_ids, inner_ids = deep_training.inner_split(ids, event, settings["inner_fraction"], member_seed)
    row_of = {pid: i for i, pid in enumerate(ids)}
    device = nn_training.resolve_device(None)
    log.info("pretraining %s %s on %d patients of %s (%d events; %d fit, %d inner), on %s",
             endpoint, member, len(ids), clinical_path, int(event.sum()), len(fit_ids),
             len(inner_ids), device)
    trained = deep_training.train_member(
        cubes, time, event, [row_of[p] for p in fit_ids], [row_of[p] for p in inner_ids],
        settings, member_seed, network=member_spec["network"], channels=channels,
        patient_ids=ids, checkpoint_dir=checkpoint_dir, device=device,
    )
    deep_training.save_member(outputs.model, trained,
                        {"endpoint": endpoint, "member": member, "pretrain": clinical_path})
    history = trained.history.copy()
    history.insert(0, "member", member)
    write_tsv(history, outputs.history, index=False)
    left_out = set(trained.landmark_left_out_ids)
    usage = [(p, deep_cohort.LEFT_OUT if p in left_out else deep_cohort.FIT, "") for p in fit_ids]
    usage += [(p, deep_cohort.INNER, "") for p in inner_ids]
    usage += [(p, "excluded", reason) for p, reason in sorted(reasons.items()) if reason]
    write_tsv(pd.DataFrame(usage, columns=["patient_id", "role", "reason"]), outputs.usage,
              index=False)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)


def score_external_job(*, members: Mapping[str, Mapping], model_paths: Sequence[str],
                       cube_paths: Sequence[str], output: str, threads: int,
                       seed: int) -> None:
    """An external cohort's deep CT block (`snakemake score`): every patient with cubes gets
    the mean over networks of its scoring fold's standardised score, as the run's validation
    patients do (radpath.deep.cohort.block_scores, `seed` the run's); nothing is trained."""
    torch.set_num_threads(max(1, int(threads)))
    paths = {patient_of(p): p for p in cube_paths}
    usable = [pid for pid, path in paths.items() if exclusion_reason(path) is None]
    left_out = sorted(set(paths) - set(usable))
    if left_out:
        log.info("no cubes (excluded) for %d patient(s): %s", len(left_out), ", ".join(left_out))
    scores = []
    cubes_by_scales: dict[tuple, np.ndarray] = {}
    for path in model_paths:
        member = deep_training.load_member(path)
        spec = members[member.meta["member"]]
        key = tuple(spec["edges_mm"] or ())
        if key not in cubes_by_scales:
            cubes_by_scales[key] = load_cube_array(paths, usable, spec["edges_mm"])[0]
        scores.append(pd.DataFrame({
            "patient_id": usable, "member": member.meta["member"],
            "fold": int(member.meta["fold"]), "role": deep_cohort.VALIDATION,
            "score": deep_training.standardised_score(member, cubes_by_scales[key])}))
        log.info("%s fold %s scored %d patients", member.meta["member"],
                 member.meta.get("fold"), len(usable))
    table = pd.concat(scores, ignore_index=True)
    risk = (deep_cohort.validation_scores(table, int(table["fold"].max()), seed)
            if usable else pd.Series(dtype=float))
    block = pd.DataFrame({"risk": risk.reindex(usable).to_numpy(float)},
                         index=pd.Index(usable, name="patient_id"))
    write_tsv(block, output)


ATTENTION_COLUMNS = ["patient_id", "scale", "edge_mm", "method", "members", "mass_in_mask",
                     "mask_share", "ratio", "file", "nifti", "nifti_ct"]


class ScaleAttention(NamedTuple):
    """The ensemble's maps of one scale for the chosen patients: (N, G, G, G) densities,
    the method(s) that made them and how many members' maps count per patient."""

    density: np.ndarray
    method: str
    members: np.ndarray


def member_channels(pid: str, cubes: Cubes, channels: Sequence[str]) -> np.ndarray:
    """(C, G, G, G): the channels a member was trained on, in its order."""
    names = [str(c) for c in cubes.channels]
    missing = [c for c in channels if c not in names]
    if missing:
        raise ValueError(f"patient {pid}: the cube file lacks the channels {missing} a model "
                         f"was trained on (it has {names}); re-run ct_cubes for every patient")
    return cubes.cube[[names.index(c) for c in channels]]


def ensemble_attention(members: Sequence[deep_training.TrainedMember],
                       cubes: Mapping[str, Cubes], device: torch.device
                       ) -> dict[str, ScaleAttention]:
    """{scale label: ScaleAttention} of `cubes` (patients in order) over every member that
    sees the scale (radpath.deep.gradcam.member_attention)."""
    maps: dict[str, list[np.ndarray]] = {}
    methods: dict[str, set[str]] = {}
    for member in members:
        x = np.stack([member_channels(pid, c, member.channels) for pid, c in cubes.items()])
        method, by_scale = gradcam.member_attention(member, x, device=device)
        for label, density in by_scale.items():
            maps.setdefault(label, []).append(density)
            methods.setdefault(label, set()).add(method)
    return {
        label: ScaleAttention(
            gradcam.ensemble_mean(scale_maps), "+".join(sorted(methods[label])),
            np.sum([np.isfinite(m.reshape(len(m), -1)).all(axis=1) for m in scale_maps],
                   axis=0),
        )
        for label, scale_maps in maps.items()
    }


def write_patient_maps(pid: str, cubes: Cubes, attention: Mapping[str, ScaleAttention],
                       row: int, out: Path, title: str) -> list[dict]:
    """One patient's maps: per scale the NIfTI on the cube's grid and on the CT's grid, one
    montage with a row per scale; the patient's rows of gradcam.tsv."""
    names = [str(c) for c in cubes.channels]
    rows, panels = [], []
    for k, edge in enumerate(cubes.edges_mm):
        label = edge_label(edge)
        if label not in attention:
            continue  # no network sees this cube
        scale = attention[label]
        density = scale.density[row]
        mask_name = f"mask@{label}"
        mask = (cubes.cube[names.index(mask_name)].astype(np.float32)
                if mask_name in names else None)
        stats = (gradcam.mask_statistics(density, mask) if mask is not None else
                 dict.fromkeys(("mass_in_mask", "mask_share", "ratio"), float("nan")))
        nifti = nifti_ct = ""
        if not np.isfinite(density).all():
            log.warning("patient %s, %s cube: no member's map has any mass", pid, label)
        else:
            nifti = f"{pid}_{label}.nii.gz"
            with atomic_path(out / nifti) as tmp:
                sitk.WriteImage(cube_image(cubes, k, density.astype(np.float32)), str(tmp))
            if cubes.has_ct_grid:
                nifti_ct = f"{pid}_{label}_ct.nii.gz"
                with atomic_path(out / nifti_ct) as tmp:
                    sitk.WriteImage(ct_grid_image(cubes, k, density), str(tmp))
        ratio = stats["ratio"]
        panels.append(gradcam.ScalePanel(
            f"{float(edge):g} mm" + (f", ratio {ratio:.2f}" if np.isfinite(ratio) else ""),
            cubes.cube[names.index(f"ct@{label}")].astype(np.float32), density, mask))
        rows.append({"patient_id": pid, "scale": label, "edge_mm": float(edge),
                     "method": scale.method, "members": int(scale.members[row]), **stats,
                     "file": f"{pid}.png", "nifti": nifti, "nifti_ct": nifti_ct})
    if not cubes.has_ct_grid:
        log.warning("patient %s: the cube file does not record the CT's grid (written by an "
                    "older ct_cubes job): maps on the cube grids only", pid)
    if panels:
        gradcam.attention_montage(panels, out / f"{pid}.png", title)
    return rows


def gradcam_job(*, endpoint: str, folds_path: str, cube_paths: Sequence[str],
                model_paths: Sequence[str], n_patients: int, out_dir: str,
                threads: int) -> None:
    """Attention maps of the first `n_patients` validation patients (in sheet order), one
    per cube scale, averaged over every fold model and network (radpath.deep.gradcam:
    Grad-CAM for networks that see one scale, saliency per scale for networks that see the
    scales stacked as channels). Per patient and scale, the map (attention density, 1 = an
    even spread) on the cube's grid (`<patient>_<scale>.nii.gz`) and on the patient's CT
    grid (`<patient>_<scale>_ct.nii.gz`: overlays the CT voxel for voxel); per patient a
    montage with a row per scale (`<patient>.png`). gradcam.tsv: a row per patient and
    scale with the method, how many members' maps count, and the map's mass in the tumour
    mask, the mask's share of the cube and their ratio (gradcam.mask_statistics)."""
    torch.set_num_threads(max(1, int(threads)))
    device = nn_training.resolve_device(None)
    folds = read_folds(folds_path)
    chosen = list(folds.index[(folds["split"] == "validation") & (folds["excluded"] == "")])
    chosen = chosen[:n_patients]
    members = [deep_training.load_member(path) for path in model_paths]
    paths = {patient_of(p): p for p in cube_paths}
    cubes = {pid: read_cubes(paths[pid]) for pid in chosen}
    attention = ensemble_attention(members, cubes, device) if chosen else {}
    methods = ", ".join(sorted({gradcam.METHOD_LABELS[m] for scale in attention.values()
                                for m in scale.method.split("+")}))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for row, (pid, patient_cubes) in enumerate(cubes.items()):
        title = f"{endpoint.upper()} {pid}: {methods}, {len(members)} models"
        rows += write_patient_maps(pid, patient_cubes, attention, row, out, title)
    log.info("attention maps of %d validation patients, %d models (%s)", len(chosen),
             len(members), methods or "none")
    write_tsv(pd.DataFrame(rows, columns=ATTENTION_COLUMNS), out / "gradcam.tsv", index=False)
