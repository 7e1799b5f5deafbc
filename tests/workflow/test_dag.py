"""The DAG: what a dry-run would build, and what re-runs after a user changes one thing.

These use empty placeholder inputs and Snakemake's touch mode, so they run in seconds
while going through the real Snakefile, sheets validation and rerun triggers.
"""

from __future__ import annotations

import os
import time

import pandas as pd
import pytest
import yaml

from placeholders import write_placeholder_cohort
from radpath.inputs.cohort import make_split
from radpath.pathology.shards import shard_slides
from smk import REPO, dry_run, run, touch_all, write_config

# Slides per GPU job in the `cohort` fixture: its 12 slides in 4 shards.
SLIDES_PER_JOB = 4
SLIDE_IDS = [f"P{i:05d}_S0" for i in range(1, 13)]

COHORT_STEPS = {
    "results/cohort/radiomics_raw.tsv",
    "results/cohort/radiomics.tsv",
    "results/report/cindex.tsv",
    "results/report/accuracy.tsv",
    "results/report/report.html",
}


def radiomics_patients(files: list[str]) -> set[str]:
    return {f.split("/")[2] for f in files if f.startswith("results/radiomics/")}


def slide_jobs(files: list[str]) -> set[str]:
    """Slides with a tiling or embedding output planned."""
    return tiled_slides(files) | embedded_slides(files)


def shard_members(files: list[str], folder: str, slide_ids=SLIDE_IDS) -> set[str]:
    """The slides of the shards (GPU jobs) planned under `folder`."""
    shards = shard_slides(slide_ids, SLIDES_PER_JOB)
    planned = {f.removeprefix(f"{folder}/") for f in files if f.startswith(f"{folder}/")}
    return {slide for shard in planned for slide in shards[shard]}


def tiled_slides(files: list[str]) -> set[str]:
    return {f.split("/")[2] for f in files
            if f.startswith("results/pathology/") and f.count("/") == 3}


def embedded_slides(files: list[str], encoder: str = "resnet50_trunc") -> set[str]:
    return shard_members(files, f"results/pathology/{encoder}/shards")


def shard_of(slide: str) -> set[str]:
    """The slides sharing `slide`'s GPU jobs."""
    return next(set(s) for s in shard_slides(SLIDE_IDS, SLIDES_PER_JOB).values() if slide in s)


@pytest.fixture()
def cohort(tmp_path):
    write_placeholder_cohort(tmp_path / "data", n_patients=12, slides_per_patient=1)
    config = write_config(tmp_path / "config.yaml", tmp_path / "data",
                          pathology={"slides_per_job": SLIDES_PER_JOB})
    return tmp_path, config


def test_dry_run_plans_every_patient_and_model(cohort):
    workdir, config = cohort
    files = dry_run(workdir, config)
    assert radiomics_patients(files) == {f"P{i:05d}" for i in range(1, 13)}
    assert tiled_slides(files) == embedded_slides(files) == set(SLIDE_IDS)
    shards = {f for f in files if f.startswith("results/pathology/resnet50_trunc/shards/")}
    assert len(shards) == len(shard_slides(SLIDE_IDS, SLIDES_PER_JOB)) == 4
    for slide in ("P00001_S0", "P00012_S0"):
        for output in ("coords.h5", "thumbnail.png", "morphology.tsv"):
            assert f"results/pathology/{slide}/{output}" in files
    for endpoint in ("os", "pfs"):
        for model in ("clinical", "radiomics_raw", "radiomics", "clinical_radiomics",
                      "pathomics_embedding", "clinical_radiomics_pathomics"):
            assert f"results/models/{endpoint}/{model}/risk.tsv" in files
    assert COHORT_STEPS <= set(files)


def test_changed_mask_reruns_only_that_patient_and_cohort_steps(cohort):
    workdir, config = cohort
    touch_all(workdir, config)
    assert dry_run(workdir, config) == []
    time.sleep(0.01)
    os.utime(workdir / "data" / "ct" / "P00004_mask.nii.gz")
    files = dry_run(workdir, config)
    assert radiomics_patients(files) == {"P00004"}
    assert slide_jobs(files) == set()
    assert COHORT_STEPS <= set(files)


def test_changed_slide_reruns_its_tiling_and_its_shard_and_cohort_steps(cohort):
    """A changed slide re-tiles alone; its shard's GPU jobs re-run (they re-use the other
    slides' results from results/reuse/, see tests/unit/test_cli.py), no other shard."""
    workdir, config = cohort
    touch_all(workdir, config)
    time.sleep(0.01)
    os.utime(workdir / "data" / "slides" / "P00009_S0.svs")
    files = dry_run(workdir, config)
    assert tiled_slides(files) == {"P00009_S0"}
    assert embedded_slides(files) == shard_of("P00009_S0") != set(SLIDE_IDS)
    assert radiomics_patients(files) == set()
    assert "results/cohort/pathomics_embedding.tsv" in files
    assert "results/report/report.html" in files


def test_another_encoder_reuses_the_tiles_and_keeps_the_first_features(cohort):
    """Tiling does not depend on the encoder: a second encoder plans one embedding job per
    slide under its own name, no tiling job, and leaves the first encoder's files alone."""
    workdir, config = cohort
    touch_all(workdir, config)
    other = write_config(workdir / "uni.yaml", workdir / "data",
                         pathology={"embedding": {"encoder": "uni", "weights": "random"},
                                    "slides_per_job": SLIDES_PER_JOB})
    files = dry_run(workdir, other)
    assert embedded_slides(files, "uni") == set(SLIDE_IDS)
    assert not tiled_slides(files)
    assert not embedded_slides(files)
    assert "results/cohort/pathomics_embedding.tsv" in files
    assert list((workdir / "results/pathology/resnet50_trunc/shards").iterdir())


def test_hub_weights_are_staged_once_by_a_local_job(cohort, tmp_path):
    """weights: hub plans one stage_encoder_weights job (a localrule: it runs where
    snakemake runs, never on a compute node) whose file every embedding job reads."""
    workdir, _ = cohort
    config = write_config(tmp_path / "hub.yaml", workdir / "data", pathology={
        "embedding": {"encoder": "uni", "weights": "hub", "weights_dir": "staged"},
        "slides_per_job": SLIDES_PER_JOB})
    files = dry_run(workdir, config)
    assert "staged/uni.safetensors" in files
    assert embedded_slides(files, "uni") == set(SLIDE_IDS)
    commands = run(workdir, config, "-n", "-p").stdout
    assert commands.count("radpath.cli stage_encoder_weights") == 1
    assert "--weights staged/uni.safetensors" in commands


def test_changed_local_weights_rerun_every_embedding_and_no_tiling(cohort):
    workdir, _ = cohort
    weights = workdir / "weights.pt"
    weights.write_bytes(b"placeholder")
    config = write_config(workdir / "local.yaml", workdir / "data",
                          pathology={"embedding": {"weights": str(weights)},
                                     "slides_per_job": SLIDES_PER_JOB})
    touch_all(workdir, config)
    assert dry_run(workdir, config) == []
    time.sleep(0.01)
    weights.write_bytes(b"other weights")
    files = dry_run(workdir, config)
    assert embedded_slides(files) == set(SLIDE_IDS)
    assert not tiled_slides(files)


def test_forcerun_one_patient(cohort):
    workdir, config = cohort
    touch_all(workdir, config)
    files = dry_run(workdir, config, forcerun=["results/radiomics/P00007/features.tsv"])
    assert radiomics_patients(files) == {"P00007"}
    assert COHORT_STEPS <= set(files)


def test_new_patients_run_only_their_jobs_and_cohort_steps(cohort):
    workdir, config = cohort
    touch_all(workdir, config)
    write_placeholder_cohort(workdir / "data", n_patients=5, first=13, seed=1,
                             slides_per_patient=1)
    files = dry_run(workdir, config)
    assert radiomics_patients(files) == {f"P{i:05d}" for i in range(13, 18)}
    new = {f"P{i:05d}_S0" for i in range(13, 18)}
    assert tiled_slides(files) == new
    # 17 slides take 8 shards of at most 4 on average (12 took 4): each old shard splits in
    # two. The new shards and those that gained a slide run (each re-uses its old slides'
    # results from results/reuse/); those that only lost some re-run by their changed
    # params, which this touch-mode DAG (no job metadata) cannot see.
    everyone = SLIDE_IDS + sorted(new)
    before = shard_slides(SLIDE_IDS, SLIDES_PER_JOB)
    after = shard_slides(everyone, SLIDES_PER_JOB)
    planned = {s for shard, members in after.items()
               if shard not in before or new & set(members) for s in members}
    assert new < planned < set(everyone)
    assert shard_members(files, "results/pathology/resnet50_trunc/shards", everyone) == planned
    assert COHORT_STEPS <= set(files)


def test_a_user_config_replaces_the_shipped_one(tmp_path):
    """Models and slides left out of a user's config stay out (they are not merged back
    from config/config.yaml), and every section it omits takes the schema's defaults."""
    write_placeholder_cohort(tmp_path / "data", n_patients=8)
    config = tmp_path / "my_config.yaml"
    config.write_text(
        f"patients: {tmp_path / 'data' / 'patients.tsv'}\n"
        f"clinical: {tmp_path / 'data' / 'clinical.tsv'}\n"
        f"radiomics: {{params: {REPO / 'config' / 'pyradiomics_ct.yaml'}}}\n"
        "endpoints: [os]\n"
        "models:\n"
        "  clinical: {clinical: false, blocks: []}\n"
        "  radiomics: {clinical: false, blocks: [radiomics]}\n",
        encoding="utf-8",
    )
    files = dry_run(tmp_path, config)
    models = {f.split("/")[3] for f in files if f.startswith("results/models/")}
    assert models == {"clinical", "radiomics"}
    assert {f.split("/")[2] for f in files if f.startswith("results/models/")} == {"os"}
    assert not slide_jobs(files)


def test_a_dry_run_announces_a_changed_split(cohort):
    workdir, config = cohort
    touch_all(workdir, config)
    split = workdir / "results" / "cohort" / "split.tsv"
    split.write_text("patient_id\tsplit\n" + "".join(
        f"P{i:05d}\ttrain\n" for i in range(1, 13)), encoding="utf-8")
    result = run(workdir, config, "-n")
    output = result.stdout + result.stderr
    assert "changes the train/validation split of" in output
    assert "set split.file to the copy" in output


def test_dicom_columns_reach_the_radiomics_command_quoted(cohort):
    workdir, config = cohort
    sheet = workdir / "data" / "patients.tsv"
    rows = sheet.read_text(encoding="utf-8").splitlines()
    extra = ["\tct_series_uid\tmask_roi\tmask_segment", "\t1.2.840.99.1\tGTV 1\t", "\t\t\t2"]
    extra += ["\t\t\t"] * (len(rows) - len(extra))
    sheet.write_text("".join(r + e + "\n" for r, e in zip(rows, extra, strict=True)),
                     encoding="utf-8")
    commands = [line for line in run(workdir, config, "-n", "-p").stdout.splitlines()
                if "radpath.cli ct_patient " in line]
    by_patient = {line.split("--patient ")[1].split()[0]: line for line in commands}
    assert "--mask-label=1 --ct-series-uid=1.2.840.99.1 '--mask-roi=GTV 1' --params" in (
        by_patient["P00001"])
    assert "--mask-label=1 --mask-segment=2 --params" in by_patient["P00002"]
    assert "--mask-label=1 --params" in by_patient["P00003"]


def test_export_plans_one_job_per_slide_and_one_cohort_job(cohort):
    """`snakemake export`: each slide's staging folder, then the CLAM/TRIDENT layouts."""
    workdir, config = cohort
    files = dry_run(workdir, config, targets=["export"])
    staged = {f.split("/")[3] for f in files if f.startswith("results/export/slides/")}
    assert staged == {f"P{i:05d}_S0" for i in range(1, 13)}
    assert {"results/export/clam", "results/export/trident",
            "results/export/excluded.tsv"} <= set(files)
    assert "results/report/report.html" not in files  # export needs no models


def train_slides(n: int = 12, seed: int = 42, validation_fraction: float = 0.3) -> set[str]:
    """The placeholder cohort's training patients' slides (the hash split of radpath.inputs.cohort)."""
    from radpath.inputs.cohort import split_draw

    return {f"P{i:05d}_S0" for i in range(1, n + 1)
            if split_draw(f"P{i:05d}", seed) >= validation_fraction}


def assigned_slides(files: list[str]) -> set[str]:
    return shard_members(files, "results/pathosig/shards")


def test_pathosig_plans_one_training_job_and_one_assignment_job_per_shard(cohort):
    workdir, config = cohort
    files = dry_run(workdir, config)
    assert assigned_slides(files) == set(SLIDE_IDS)
    assert {"results/pathosig/training_tiles.h5", "results/pathosig/model.pt",
            "results/cohort/pathomics_hpc.tsv", "results/report/pathosig_mosaics.tsv"} <= set(files)
    commands = run(workdir, config, "-n", "-p").stdout
    assert commands.count("radpath.cli pathosig_assign") == 4
    # The training tiles job reads the training patients' slides and no other.
    job = commands.split("rule pathosig_training_tiles:")[1].split("\n\n")[0]
    inputs = job.split("input:")[1].split("\n")[0]
    read = {name.split("/")[2] for name in inputs.split(", ") if name.endswith("/coords.h5")}
    assert read == train_slides() and 0 < len(read) < 12


def test_changed_validation_slide_does_not_retrain_the_clusters(cohort):
    """The clustering is trained on training slides only: a validation slide's change
    re-runs its own jobs and the cohort steps, a training slide's change retrains."""
    workdir, config = cohort
    touch_all(workdir, config)
    validation = sorted({f"P{i:05d}_S0" for i in range(1, 13)} - train_slides())
    training = sorted(train_slides())
    time.sleep(0.01)
    os.utime(workdir / "data" / "slides" / f"{validation[0]}.svs")
    files = dry_run(workdir, config)
    assert assigned_slides(files) == shard_of(validation[0])
    assert "results/pathosig/model.pt" not in files
    assert "results/cohort/pathomics_hpc.tsv" in files
    time.sleep(0.01)
    os.utime(workdir / "data" / "slides" / f"{training[0]}.svs")
    files = dry_run(workdir, config)
    assert "results/pathosig/model.pt" in files
    assert assigned_slides(files) == set(SLIDE_IDS)


def dfs_cohort(tmp_path):
    """A cohort whose sheet has OS and DFS (as dfs_months, dfs_status) but no PFS columns,
    and a config declaring exactly those two endpoints."""
    import yaml

    names = {"pfs_time": "dfs_months", "pfs_event": "dfs_status"}
    write_placeholder_cohort(tmp_path / "data", n_patients=12, clinical_names=names)
    config = write_config(tmp_path / "config.yaml", tmp_path / "data")
    settings = yaml.safe_load(config.read_text(encoding="utf-8"))
    # Set here, not through write_config, which would merge it into the shipped os/pfs.
    settings["endpoints"] = {
        "os": {"time": "os_time", "event": "os_event"},
        "dfs": {"time": "dfs_months", "event": "dfs_status", "not_after": "os"},
    }
    config.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    return config


def test_an_endpoint_declared_with_its_own_columns_gets_its_models(tmp_path):
    config = dfs_cohort(tmp_path)
    files = dry_run(tmp_path, config)
    endpoints = {f.split("/")[2] for f in files if f.startswith("results/models/")}
    assert endpoints == {"os", "dfs"}
    for model in ("clinical", "radiomics", "clinical_radiomics"):
        assert f"results/models/dfs/{model}/risk.tsv" in files
    assert "results/cohort/outcomes.tsv" in files and COHORT_STEPS <= set(files)


def test_a_time_after_its_not_after_endpoint_stops_the_run(tmp_path):
    config = dfs_cohort(tmp_path)
    sheet = tmp_path / "data" / "clinical.tsv"
    rows = [row.split("\t") for row in sheet.read_text(encoding="utf-8").splitlines()]
    rows[1][5] = str(float(rows[1][3]) + 1)  # P00001's DFS one month after its OS
    sheet.write_text("".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")
    result = run(tmp_path, config, "-n", check=False)
    assert result.returncode != 0
    assert (
        f"clinical.tsv line 2 (P00001): dfs_months {float(rows[1][5])} is after os_time "
        f"{float(rows[1][3])} (dfs ends no later than os: endpoints.dfs.not_after in the config)"
    ) in result.stdout + result.stderr


def test_treatment_benefit_is_planned_only_with_a_treatment_column(cohort):
    workdir, config = cohort
    files = dry_run(workdir, config)
    assert {"results/report/treatment_benefit.tsv",
            "results/report/treatment_benefit"} <= set(files)
    without = write_config(workdir / "no_treatment.yaml", workdir / "data",
                           treatment={"column": "", "treated": "", "models": []})
    assert not any("treatment_benefit" in f for f in dry_run(workdir, without))


def cube_patients(files: list[str]) -> set[str]:
    return {f.split("/")[3].removesuffix(".npz") for f in files
            if f.startswith("results/deep_ct/cubes/")}


def trained_members(files: list[str]) -> set[tuple[str, str, str]]:
    """(endpoint, network, fold) of every deep CT training job planned."""
    return {tuple(f.split("/")[2:5]) for f in files
            if f.startswith("results/deep_ct/") and f.endswith("/model.pt")}


@pytest.fixture()
def deep_cohort(tmp_path):
    write_placeholder_cohort(tmp_path / "data", n_patients=12, slides_per_patient=1)
    config = write_config(tmp_path / "config.yaml", tmp_path / "data", with_deep_ct=True)
    return tmp_path, config


def test_deep_ct_plans_one_cube_job_per_patient_and_one_training_job_per_fold_and_network(
        deep_cohort):
    workdir, config = deep_cohort
    files = dry_run(workdir, config)
    assert cube_patients(files) == {f"P{i:05d}" for i in range(1, 13)}
    assert trained_members(files) == {(endpoint, "resnet10", f"fold{k}")
                                      for endpoint in ("os", "pfs") for k in (1, 2, 3)}
    for endpoint in ("os", "pfs"):
        assert f"results/cohort/deep_ct_{endpoint}.tsv" in files
        assert f"results/deep_ct/{endpoint}/gradcam" in files
        for model in ("deep_ct", "clinical_deep_ct", "clinical_radiomics_deep_ct"):
            assert f"results/models/{endpoint}/{model}/risk.tsv" in files
    # view per_scale: one network per cube size, each trained per fold.
    per_scale = write_config(workdir / "per_scale.yaml", workdir / "data", with_deep_ct=True,
                             deep_ct={"view": "per_scale", "networks": ["resnet10", "resnet18"]})
    files = dry_run(workdir, per_scale)
    assert {member for _, member, _ in trained_members(files)} == {
        f"{net}-{edge}mm" for net in ("resnet10", "resnet18") for edge in ("50", "37.5", "25")}
    assert len(trained_members(files)) == 2 * 6 * 3


def test_changed_mask_reruns_that_patients_cubes_and_every_deep_ct_training_job(deep_cohort):
    workdir, config = deep_cohort
    touch_all(workdir, config)
    assert dry_run(workdir, config) == []
    time.sleep(0.01)
    os.utime(workdir / "data" / "ct" / "P00004_mask.nii.gz")
    files = dry_run(workdir, config)
    assert cube_patients(files) == {"P00004"}
    assert radiomics_patients(files) == {"P00004"}
    assert len(trained_members(files)) == 6
    assert slide_jobs(files) == set()


def test_without_deep_ct_models_nothing_of_deep_ct_is_planned(cohort):
    workdir, config = cohort
    files = dry_run(workdir, config)
    assert not [f for f in files if "deep_ct" in f]


@pytest.fixture()
def pretrain_cohort(tmp_path):
    write_placeholder_cohort(tmp_path / "data", n_patients=12, slides_per_patient=1)
    # Its own files; IDs may repeat the run's (another cohort), its outputs are apart.
    write_placeholder_cohort(tmp_path / "data" / "pretrain", n_patients=8, seed=1)
    config = write_config(tmp_path / "config.yaml", tmp_path / "data", with_deep_ct=True)
    return tmp_path, config


def pretrain_jobs(files: list[str]) -> set[str]:
    return {f.removeprefix("results/deep_ct_pretrain/") for f in files
            if f.startswith("results/deep_ct_pretrain/") and f.endswith("/model.pt")}


def test_pretraining_plans_its_cubes_one_job_per_network_and_random_start_twins(
        pretrain_cohort):
    workdir, config = pretrain_cohort
    files = dry_run(workdir, config)
    assert {f.split("/")[3] for f in files if f.startswith("results/deep_ct_pretrain/cubes/")
            } == {f"P{i:05d}.npz" for i in range(1, 9)}
    assert pretrain_jobs(files) == {"os/resnet10/model.pt", "pfs/resnet10/model.pt"}
    assert trained_members(files) == {(endpoint, member, f"fold{k}")
                                      for endpoint in ("os", "pfs") for k in (1, 2, 3)
                                      for member in ("resnet10", "resnet10-random_start")}
    assert "results/deep_ct/os/starts.tsv" in files


def test_a_changed_pretraining_mask_reruns_the_pretrained_members_not_their_twins(
        pretrain_cohort):
    workdir, config = pretrain_cohort
    touch_all(workdir, config)
    assert dry_run(workdir, config) == []
    time.sleep(0.01)
    os.utime(workdir / "data" / "pretrain" / "ct" / "P00003_mask.nii.gz")
    files = dry_run(workdir, config)
    assert [f for f in files if "/cubes/" in f] == ["results/deep_ct_pretrain/cubes/P00003.npz"]
    assert pretrain_jobs(files) == {"os/resnet10/model.pt", "pfs/resnet10/model.pt"}
    assert trained_members(files) == {(endpoint, "resnet10", f"fold{k}")
                                      for endpoint in ("os", "pfs") for k in (1, 2, 3)}
    assert radiomics_patients(files) == set()


def test_score_plans_only_the_external_cohorts_jobs(cohort):
    """`snakemake score` on a finished run: the external cohort's per-patient and per-slide
    jobs, matrices, model risks and report, and nothing of the run; a cohort without slides
    gets the models that need none; a training patient's CT in an external cohort stops the
    run before any job."""
    import yaml

    workdir, config = cohort
    touch_all(workdir, config)
    # Another hospital's IDs may be the run's (P00001...): its files are its own.
    write_placeholder_cohort(workdir / "ext", n_patients=5, slides_per_patient=1, seed=1)
    cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
    ext = {sheet: str(workdir / "ext" / f"{sheet}.tsv") for sheet in ("patients", "clinical")}
    cfg["score"] = {"cohorts": {"hosp_b": {**ext, "slides": str(workdir / "ext/slides.tsv")},
                                "hosp_c": ext}}
    score_config = workdir / "score.yaml"
    score_config.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")

    assert dry_run(workdir, score_config) == []  # the run itself is untouched
    files = dry_run(workdir, score_config, targets=["score"])
    assert files and all(f.startswith("results/score/hosp_") for f in files)
    external = {f"P{i:05d}" for i in range(1, 6)}
    for name in ("hosp_b", "hosp_c"):
        assert {f.split("/")[4] for f in files
                if f.startswith(f"results/score/{name}/radiomics/")} == external
        assert f"results/score/{name}/report.html" in files
        assert f"results/score/{name}/models/pfs/clinical_radiomics/risk.tsv" in files
    assert shard_members(files, "results/score/hosp_b/pathology/resnet50_trunc/shards",
                         [f"{p}_S0" for p in external]) == {f"{p}_S0" for p in external}
    assert "results/score/hosp_b/models/os/clinical_radiomics_pathomics/risk.tsv" in files
    assert not [f for f in files if f.startswith("results/score/hosp_c/pathology/")]
    assert "results/score/hosp_c/models/os/clinical_radiomics_pathomics/risk.tsv" not in files

    patients = (workdir / "ext/patients.tsv").read_text(encoding="utf-8")
    (workdir / "ext/patients.tsv").write_text(
        patients.replace("ct/P00002_ct.nii.gz", str(workdir / "data/ct/P00001_ct.nii.gz")),
        encoding="utf-8")
    from radpath.inputs.cohort import split_draw

    assert split_draw("P00001", 42) >= 0.3  # P00001 is one of the run's training patients
    with pytest.raises(Exception, match="P00002's ct .* is training patient P00001's"):
        dry_run(workdir, score_config, targets=["score"])


def test_synthesis_plans_training_patients_only_and_a_sampling_change_keeps_the_ddpm(tmp_path):
    write_placeholder_cohort(tmp_path / "data", n_patients=20, slides_per_patient=1)
    config = write_config(tmp_path / "config.yaml", tmp_path / "data", with_synthesis=True)
    clinical = pd.read_csv(tmp_path / "data" / "clinical.tsv", sep="\t", dtype=str)
    split = make_split(clinical.set_index("patient_id", drop=False),
                              yaml.safe_load(config.read_text())["split"]["validation_fraction"],
                              42)
    training = set(split.index[split == "train"])
    files = dry_run(tmp_path, config)
    layouts = {f.split("/")[-1].removesuffix(".npz") for f in files
               if f.startswith("results/synthesis/layouts/") and f.endswith(".npz")}
    assert len(layouts) == 20 and 0 < len(training) < 20  # one CT job per patient makes them
    commands = [line for line in run(tmp_path, config, "-n", "-p").stdout.splitlines()
                if "radpath.cli ct_patient " in line and "logs/ct_patient/" in line]
    skipped = {line.split("--patient ")[1].split()[0] for line in commands
               if "--layout-skip=" in line}
    assert len(commands) == 20 and skipped == set(clinical["patient_id"]) - training
    assert "results/synthesis/model.pt" in files
    assert "results/synthesis/quality.tsv" in files  # the report's synthesis section
    touch_all(tmp_path, config)
    assert dry_run(tmp_path, config) == []
    changed = write_config(tmp_path / "config.yaml", tmp_path / "data", with_synthesis=True,
                           synthesis={"sampling_steps": 20})
    files = dry_run(tmp_path, changed)
    assert "results/synthesis/model.pt" not in files
    assert not [f for f in files if f.startswith("results/synthesis/layouts/")]
    assert [f for f in files if f.startswith("results/synthesis/samples/")]
    assert "results/synthesis/quality.tsv" in files


def test_synthetic_augmentation_plans_cubes_of_synthetic_cts_and_twins_without_them(tmp_path):
    write_placeholder_cohort(tmp_path / "data", n_patients=20, slides_per_patient=1)
    config = write_config(tmp_path / "config.yaml", tmp_path / "data", with_deep_ct=True,
                          with_synthesis=True, deep_ct={"synthetic_augmentation": True})
    files = dry_run(tmp_path, config)
    cubes = [f for f in files if f.startswith("results/synthesis/cubes/real/")]
    assert len(cubes) == yaml.safe_load(config.read_text())["synthesis"]["layouts"]
    assert {member for _, member, _ in trained_members(files)} == {
        "resnet10", "resnet10-without_synthetic"}
    assert "results/deep_ct/os/synthetic.tsv" in files
    # with a pretraining cohort the twins start from the same pretrained network
    write_placeholder_cohort(tmp_path / "data" / "pretrain", n_patients=8, seed=1)
    pretrained = write_config(tmp_path / "pretrain.yaml", tmp_path / "data", with_deep_ct=True,
                              with_synthesis=True, deep_ct={"synthetic_augmentation": True})
    files = dry_run(tmp_path, pretrained)
    assert sorted(f for f in files if f.startswith("results/deep_ct_pretrain/")
                  and f.endswith("model.pt")) == [
        f"results/deep_ct_pretrain/{e}/resnet10/model.pt" for e in ("os", "pfs")]
    without = write_config(tmp_path / "plain.yaml", tmp_path / "data", with_deep_ct=True)
    assert not [f for f in dry_run(tmp_path, without) if f.startswith("results/synthesis/")]
