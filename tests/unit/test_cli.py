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
        "ct_patient", "--patient", "P7", "--ct", str(write(ct, tmp_path / "ct.nrrd")),
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
    log = ["--log", str(tmp_path / "slide.log")]
    tiles = [
        "slide_tiles", "--slide-id", slide.stem, "--slide", str(slide), "--mpp=", *log,
        "--settings", json.dumps(
            {key: settings[key] for key in ("tissue", "tiles", "morphology")}
            | {"seed": 1, "on_error": on_error}),
        "--coords", out["coords"], "--thumbnail", out["thumbnail"],
        "--morphology", out["morphology"],
    ]
    embedding = [
        "slide_embedding", *log, "--threads", str(threads), "--settings", json.dumps(
            {"tiles": settings["tiles"], "embedding": settings["embedding"], "seed": 1,
             "on_error": on_error, "store": ""}),
        "--slides", json.dumps([{"slide_id": slide.stem, "slide": str(slide), "mpp": None,
                                 "coords": out["coords"], "out": out["features"]}]),
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


def shard_args(tmp_path: Path, slides: list[Path], on_error: str, store: str = "") -> list[str]:
    """A `slide_embedding` command for a shard of already tiled slides (out/<id>/coords.h5)."""
    from radpath.inputs.configuration import default_config

    pathology = default_config()["pathology"]
    items = [{"slide_id": s.stem, "slide": str(s), "mpp": None,
              "coords": str(tmp_path / "out" / s.stem / "coords.h5"),
              "out": str(tmp_path / "shard" / f"{s.stem}.h5")} for s in slides]
    return ["slide_embedding", "--log", str(tmp_path / "shard.log"), "--threads", "1",
            "--slides", json.dumps(items), "--settings", json.dumps(
                {"tiles": pathology["tiles"] | {"max_tiles": 6},
                 "embedding": pathology["embedding"] | {"batch_size": 6}, "seed": 1,
                 "on_error": on_error, "store": store})]


def tiled_slides(tmp_path: Path, names: tuple[str, ...]) -> list[Path]:
    slides = []
    for seed, name in enumerate(names):
        slide = tmp_path / f"{name}.svs"
        write_synthetic_svs(slide, 1600, 1200, mpp=0.5, seed=seed)
        tiles, _ = slide_commands(tmp_path / name, slide, "stop", tiles={"max_tiles": 6},
                                  morphology={"n_tiles": 2})
        tiles[tiles.index("--coords") + 1] = str(tmp_path / "out" / name / "coords.h5")
        assert radpath_cli(*tiles).returncode == 0
        slides.append(slide)
    return slides


@pytest.mark.parametrize("on_error", ["stop", "exclude"])
def test_a_bad_slide_in_a_shard_is_handled_as_in_a_job_of_its_own(tmp_path, on_error):
    """One process embeds the shard, the encoder built once; a slide that turns out unreadable
    fails the job naming it (stop) or is excluded (exclude), and the others are embedded."""
    import h5py

    good, bad = tiled_slides(tmp_path, ("S1", "S2"))
    bad.write_bytes(b"replaced by a broken file after tiling")
    result = radpath_cli(*shard_args(tmp_path, [good, bad], on_error))
    log = (tmp_path / "shard.log").read_text(encoding="utf-8")
    assert log.count("slide S1: embedding") == 1
    with h5py.File(tmp_path / "shard" / "S1.h5") as h5:
        assert h5["features"].shape == (6, 1024)
    bad_out = tmp_path / "shard" / "S2.h5"
    if on_error == "stop":
        assert result.returncode != 0
        assert "S2" in result.stderr and str(bad) in result.stderr
        assert not bad_out.exists()
    else:
        assert result.returncode == 0, result.stderr
        reason = bad_out.read_text(encoding="utf-8")
        assert reason.startswith(EXCLUSION_PREFIX) and str(bad) in reason


def test_a_rerun_shard_links_unchanged_slides_from_the_store(tmp_path):
    """A shard re-run (e.g. after one slide was fixed) embeds only the slides whose inputs or
    settings changed; the others come back from the store, and no encoder is built for them."""
    import h5py

    slides = tiled_slides(tmp_path, ("S1", "S2"))
    store = str(tmp_path / "reuse")
    args = shard_args(tmp_path, slides, "stop", store)
    assert radpath_cli(*args).returncode == 0
    with h5py.File(tmp_path / "shard" / "S1.h5") as h5:
        first = h5["features"][:]
    for out in (tmp_path / "shard").iterdir():  # Snakemake removes a re-run job's outputs
        out.unlink()
    assert radpath_cli(*args).returncode == 0
    log = (tmp_path / "shard.log").read_text(encoding="utf-8")
    assert ": embedding" not in log and log.count("re-used") == 2
    with h5py.File(tmp_path / "shard" / "S1.h5") as h5:
        np.testing.assert_array_equal(h5["features"][:], first)
    changed = json.loads(args[args.index("--settings") + 1])
    changed["embedding"]["precision"] = "fp32"
    args[args.index("--settings") + 1] = json.dumps(changed)
    assert radpath_cli(*args).returncode == 0
    log = (tmp_path / "shard.log").read_text(encoding="utf-8")
    assert log.count("re-used") == 0 and log.count("slide S2: embedding") == 1


def ct_patient_args(tmp_path: Path, cube_edges: list[float], on_error: str = "stop") -> list[str]:
    """A `ct_patient` command making features, QC and cubes; the layout files record a skip."""
    import yaml

    from radpath.inputs.configuration import default_config

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(FAST_PARAMS), encoding="utf-8")
    ct, mask = synthetic_case()
    cubes = default_config()["deep_ct"]["cubes"] | {"edges_mm": cube_edges, "grid": 8}
    out = tmp_path / "out"
    return [
        "ct_patient", "--patient", "P7", "--ct", str(write(ct, tmp_path / "ct.nrrd")),
        "--mask", str(write(mask, tmp_path / "mask.nrrd")), "--mask-label", "1",
        "--params", str(params), "--settings", json.dumps(
            {"ct": CT_CFG, "cubes": cubes, "synthesis": None, "on_error": on_error,
             "store": str(tmp_path / "reuse")}),
        "--features", str(out / "features.tsv"), "--qc", str(out / "qc.tsv"),
        "--cubes", str(out / "cubes.npz"), "--layout", str(out / "layout.npz"),
        "--layout-image", str(out / "layout.nii.gz"), "--ct-image", str(out / "ct.nii.gz"),
        "--layout-skip", "not a synthesis patient", "--log", str(tmp_path / "job.log"),
    ]


def test_ct_patient_job_reads_the_ct_once_and_reuses_what_a_setting_left_unchanged(tmp_path):
    """Features, QC and cubes from one job; with other cube settings the re-run job makes new
    cubes and links the radiomics features back from the store."""
    args = ct_patient_args(tmp_path, [20.0, 10.0])
    result = radpath_cli(*args)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    features = pd.read_csv(out / "features.tsv", sep="\t")
    assert features["patient_id"].tolist() == ["P7"]
    assert np.load(out / "cubes.npz")["edges_mm"].tolist() == [20.0, 10.0]
    for name in ("layout.npz", "layout.nii.gz", "ct.nii.gz"):
        assert (out / name).read_text(encoding="utf-8") == (
            f"{EXCLUSION_PREFIX}not a synthesis patient\n")
    for path in out.iterdir():
        path.unlink()
    result = radpath_cli(*ct_patient_args(tmp_path, [20.0, 15.0, 10.0]))
    assert result.returncode == 0, result.stderr
    log = (tmp_path / "job.log").read_text(encoding="utf-8")
    assert log.count("re-used") == 1 and "radiomics" in log.split("re-used")[1].split("\n")[0]
    assert np.load(out / "cubes.npz")["edges_mm"].tolist() == [20.0, 15.0, 10.0]
    pd.testing.assert_frame_equal(pd.read_csv(out / "features.tsv", sep="\t"), features)
