"""radpath.deep.gpu_jobs: a pretraining job writes a start that the fold models load strictly."""


import numpy as np
import pandas as pd
import torch
from deep_ct_data import (
    CHANNELS,
    TINY,
    sphere_cohort,
)

from radpath.deep import networks
from radpath.deep import training as dc
from radpath.deep.cohort import FIT, INNER

FIT_ROWS, INNER_ROWS, HELD_ROWS = np.arange(140), np.arange(140, 176), np.arange(176, 676)


def test_a_pretraining_job_writes_a_start_the_fold_models_load_strictly(tmp_path):
    """deep_ct_pretrain's job on a small pretraining cohort (one patient excluded): the epoch
    is chosen on an inner part of that cohort, usage.tsv lists every patient's role, and the
    member file is a valid start for the endpoint's fold models (strict loading)."""
    from types import SimpleNamespace

    from radpath.deep.gpu_jobs import pretrain_job
    from radpath.inputs.runtime import write_exclusion

    cubes, time_, event, _ = sphere_cohort(20, grid=8, seed=4)
    ids = [f"G{i:03d}" for i in range(20)]
    paths = []
    for i, pid in enumerate(ids):
        path = tmp_path / "cubes" / f"{pid}.npz"
        path.parent.mkdir(exist_ok=True)
        if i == 0:
            write_exclusion(pid, "patient_id", "mask empty", [str(path)])
        else:
            np.savez(path, cube=cubes[i], channels=np.array(CHANNELS),
                     edges_mm=np.array([16.0]), centre_mm=np.zeros(3), direction=np.eye(3),
                     origin_mm=np.zeros(3), spacing_mm=np.full(3, 2.0))
        paths.append(str(path))
    pd.DataFrame({"patient_id": ids, "months": time_, "died": event}).to_csv(
        tmp_path / "clinical.tsv", sep="\t", index=False)
    outputs = SimpleNamespace(**{name: str(tmp_path / "out" / f"{name}.{ext}") for name, ext in
                                 (("model", "pt"), ("history", "tsv"), ("usage", "tsv"))})
    (tmp_path / "out").mkdir()
    pretrain_job(endpoint="os", member="resnet10",
                 member_spec={"network": "resnet10", "edges_mm": None}, settings=TINY,
                 epochs=2, seed=1, clinical_path=str(tmp_path / "clinical.tsv"),
                 columns={"time": "months", "event": "died"}, cube_paths=paths,
                 checkpoint_dir=str(tmp_path / "out" / "checkpoints"), outputs=outputs,
                 threads=1)
    usage = pd.read_csv(outputs.usage, sep="\t", keep_default_na=False)
    assert sorted(usage["patient_id"]) == ids
    roles = usage.set_index("patient_id")["role"]
    assert roles["G000"] == "excluded" and "mask empty" in usage["reason"].iloc[-1]
    assert set(roles.drop("G000")) == {FIT, INNER} and (roles == INNER).sum() >= 2
    history = pd.read_csv(outputs.history, sep="\t")
    assert list(history["epoch"]) == [1, 2] and history["best"].sum() == 1
    member = dc.load_member(outputs.model)
    assert set(member.fit_ids) == set(roles.index[roles == FIT])
    assert member.meta["pretrain"] == str(tmp_path / "clinical.tsv")
    state = networks.load_init_checkpoint(outputs.model, "resnet10", len(CHANNELS), TINY["width"])
    assert all(torch.equal(state[k], member.state_dict[k]) for k in state)
    assert not (tmp_path / "out" / "checkpoints").exists()
