"""`python -m radpath.cli`, the command the per-patient and per-slide rules run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from ct_cases import CT_CFG, FAST_PARAMS, synthetic_case, write
from radpath_cli import radpath_cli

from radpath.inputs.runtime import EXCLUSION_PREFIX
from radpath_demo.slides import write_synthetic_svs

REPO = Path(__file__).resolve().parents[2]


def radiomics_args(tmp_path: Path, mask: Path, on_error: str) -> list[str]:
    import yaml

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(FAST_PARAMS), encoding="utf-8")
    ct, _ = synthetic_case()
    return [
        "radiomics", "--patient", "P7", "--ct", str(write(ct, tmp_path / "ct.nrrd")),
        "--mask", str(mask), "--mask-label", "1", "--params", str(params),
        "--settings", json.dumps({"ct": CT_CFG, "on_error": on_error}),
        "--features", str(tmp_path / "out" / "features.tsv"),
        "--qc", str(tmp_path / "out" / "qc.tsv"), "--log", str(tmp_path / "job.log"),
    ]


def test_radiomics_job_writes_one_feature_row(tmp_path):
    _, mask = synthetic_case()
    result = radpath_cli(*radiomics_args(tmp_path, write(mask, tmp_path / "m.nrrd"), "stop"))
    assert result.returncode == 0, result.stderr
    features = pd.read_csv(tmp_path / "out" / "features.tsv", sep="\t")
    assert features["patient_id"].tolist() == ["P7"]
    assert "original_shape_VoxelVolume" in features.columns


@pytest.mark.parametrize("on_error", ["stop", "exclude"])
def test_empty_mask_fails_or_is_excluded_with_a_one_line_reason(tmp_path, on_error):
    _, mask = synthetic_case()
    empty = sitk.GetImageFromArray(np.zeros(sitk.GetArrayFromImage(mask).shape, np.uint8))
    empty.CopyInformation(mask)
    mask_path = write(empty, tmp_path / "empty.nrrd")
    result = radpath_cli(*radiomics_args(tmp_path, mask_path, on_error))
    log = (tmp_path / "job.log").read_text(encoding="utf-8")
    assert "P7" in log and str(mask_path) in log
    if on_error == "stop":
        assert result.returncode != 0
        assert not (tmp_path / "out" / "features.tsv").exists()
    else:
        assert result.returncode == 0, result.stderr
        record = pd.read_csv(tmp_path / "out" / "features.tsv", sep="\t")
        assert record["patient_id"].tolist() == ["P7"]
        assert str(mask_path) in record["error"][0] and "\n" not in record["error"][0]


SLIDE_OUTPUTS = ("coords.h5", "thumbnail.png", "morphology.tsv", "features.h5")


def slide_commands(tmp_path: Path, slide: Path, on_error: str, threads: int = 1,
                   **overrides: dict) -> tuple[list[str], list[str]]:
    """The `slide_tiles` and `slide_embedding` command lines (the two jobs of a slide)
    writing SLIDE_OUTPUTS under tmp_path/out, default settings updated section by section
    with `overrides` (e.g. embedding={"num_workers": 1})."""
    from radpath.inputs.configuration import default_config

    pathology = default_config()["pathology"]
    settings = {key: pathology[key] | overrides.get(key, {})
                for key in ("tissue", "tiles", "morphology", "embedding")}
    out = {name.split(".")[0]: str(tmp_path / "out" / name) for name in SLIDE_OUTPUTS}
    common = ["--slide-id", slide.stem, "--slide", str(slide), "--mpp=",
              "--log", str(tmp_path / "slide.log")]
    tiles = [
        "slide_tiles", *common, "--settings", json.dumps(
            {key: settings[key] for key in ("tissue", "tiles", "morphology")}
            | {"seed": 1, "on_error": on_error}),
        "--coords", out["coords"], "--thumbnail", out["thumbnail"],
        "--morphology", out["morphology"],
    ]
    embedding = [
        "slide_embedding", *common, "--threads", str(threads), "--settings", json.dumps(
            {"tiles": settings["tiles"], "embedding": settings["embedding"], "seed": 1,
             "on_error": on_error}),
        "--coords", out["coords"], "--features", out["features"],
    ]
    return tiles, embedding


def run_slide_jobs(tmp_path: Path, slide: Path, on_error: str) -> None:
    for command in slide_commands(tmp_path, slide, on_error):
        result = radpath_cli(*command)
        assert result.returncode == 0, result.stderr


def test_slide_jobs_write_coords_thumbnail_morphology_and_features(tmp_path):
    import h5py

    slide = tmp_path / "S1.svs"
    write_synthetic_svs(slide, 1600, 1200, mpp=0.5, seed=3)
    out = tmp_path / "out"
    run_slide_jobs(tmp_path, slide, "stop")
    assert not (out / "coords.h5").read_bytes().startswith(EXCLUSION_PREFIX.encode())
    morphology = pd.read_csv(out / "morphology.tsv", sep="\t")
    assert morphology["slide_id"].tolist() == ["S1"]
    assert morphology.shape[1] > 10
    assert (out / "thumbnail.png").stat().st_size > 0
    with h5py.File(out / "coords.h5") as coords, h5py.File(out / "features.h5") as features:
        assert features["features"].shape == (len(coords["coords"]), 1024)
        np.testing.assert_array_equal(features["coords"][:], coords["coords"][:])
        assert features.attrs["encoder"] == "resnet50_trunc"
        assert features.attrs["weights"] == "random"
    log = (tmp_path / "slide.log").read_text(encoding="utf-8")
    assert "slide S1: embedding" in log


def test_slide_that_cannot_be_tiled_is_excluded_from_all_its_outputs(tmp_path):
    slide = tmp_path / "S2.svs"
    slide.write_bytes(b"not a slide")
    outputs = {name: tmp_path / "out" / name for name in SLIDE_OUTPUTS}
    run_slide_jobs(tmp_path, slide, "exclude")
    for name in ("coords.h5", "thumbnail.png", "features.h5"):
        assert outputs[name].read_text(encoding="utf-8").startswith(EXCLUSION_PREFIX), name
    record = pd.read_csv(outputs["morphology.tsv"], sep="\t")
    assert record["slide_id"].tolist() == ["S2"] and str(slide) in record["error"][0]


# Runs `python -m radpath.cli`'s main with embed_tiles wrapped: what torch and the DataLoader
# use while the tiles are embedded goes to the JSON file argv[1].
EMBED_SPY = """
import json, sys, torch
import radpath.pathology.embedding as embed
from radpath import cli
real = embed.embed_tiles
def spy(loader, *args, **kwargs):
    with open(sys.argv[1], "w", encoding="utf-8") as out:
        json.dump({"torch_threads": torch.get_num_threads(), "workers": loader.num_workers}, out)
    return real(loader, *args, **kwargs)
embed.embed_tiles = spy
cli.main(sys.argv[2:])
"""


@pytest.mark.parametrize(
    ("threads", "num_workers", "workers", "torch_threads"),
    [(3, 0, 0, 3), (3, 1, 1, 2), (2, 4, 1, 1)],
)
def test_slide_job_embeds_with_the_cpus_it_is_given(tmp_path, threads, num_workers, workers,
                                                    torch_threads):
    """--threads (the rule's threads = pathology.threads), not OMP_NUM_THREADS, sets the
    DataLoader workers and torch's threads; workers beyond threads - 1 are cut, with a warning."""
    slide = tmp_path / "S1.svs"
    write_synthetic_svs(slide, 1600, 1200, mpp=0.5, seed=3)
    tiles, args = slide_commands(tmp_path, slide, "stop", threads=threads,
                                 tiles={"max_tiles": 8}, morphology={"n_tiles": 4},
                                 embedding={"num_workers": num_workers, "batch_size": 4})
    assert radpath_cli(*tiles).returncode == 0
    observed = tmp_path / "observed.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", EMBED_SPY, str(observed), *args],
                            capture_output=True, text=True, encoding="utf-8", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(observed.read_text(encoding="utf-8")) == {
        "torch_threads": torch_threads, "workers": workers}
    log = (tmp_path / "slide.log").read_text(encoding="utf-8")
    assert (f"{threads} CPUs: {workers} DataLoader workers, {torch_threads} torch threads"
            in log)
    assert ("using 1 workers" in log) == (num_workers > workers)
