"""`snakemake export` after a real run of the workflow (slow: on a copy of the demo's run)."""

from __future__ import annotations

import time

import h5py
import pandas as pd
import pytest
import torch
import yaml

from smk import run

pytestmark = pytest.mark.slow
# The run's outputs are fresh; with only mtime as a rerun trigger, an edit to radpath's code
# since the session's run cannot make this test re-run tiling and embedding as well.
ONLY_EXPORT = "--rerun-triggers=mtime"


@pytest.mark.xdist_group("demo")
def test_export_writes_both_layouts_for_every_slide(demo_run, tmp_path):
    finished = demo_run.writable_copy(tmp_path / "run")
    workdir, config = finished.workdir, finished.config
    start = time.perf_counter()
    result = run(workdir, config, ONLY_EXPORT, "--", "export")
    seconds = time.perf_counter() - start
    print(f"snakemake export: {seconds:.0f} s")
    output = result.stdout + result.stderr
    assert "rule slide_tiles" not in output and "rule slide_embedding" not in output
    sheet = workdir / yaml.safe_load(config.read_text(encoding="utf-8"))["slides"]
    slide_ids = pd.read_csv(sheet, sep="\t", dtype=str)["slide_id"].tolist()
    export = workdir / "results" / "export"
    table = pd.read_csv(export / "clam" / "dataset.csv", dtype={"slide_id": str})
    excluded = pd.read_csv(export / "excluded.tsv", sep="\t", dtype={"slide_id": str})
    assert sorted([*table["slide_id"], *excluded["slide_id"]]) == sorted(slide_ids)
    assert len(table) > 0
    for slide_id in table["slide_id"]:
        features = workdir / "results/pathology/resnet50_trunc" / slide_id / "features.h5"
        with h5py.File(features) as h5:
            n_tiles, dim = h5["features"].shape
        bag = torch.load(export / "clam" / "pt_files" / f"{slide_id}.pt", weights_only=True)
        assert bag.dtype == torch.float32 and tuple(bag.shape) == (n_tiles, dim)
        assert (export / "clam" / "h5_files" / f"{slide_id}.h5").is_file()
        trident = export / "trident"
        assert len(list(trident.glob(f"*x_*px_0px_overlap/patches/{slide_id}_patches.h5"))) == 1
        assert len(list(trident.glob(f"*x_*px_0px_overlap/features_*/{slide_id}.h5"))) == 1
    again = run(workdir, config, ONLY_EXPORT, "-n", "--", "export")
    assert "Nothing to be done" in again.stdout + again.stderr
