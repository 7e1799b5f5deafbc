"""Slides in shards for the GPU jobs: stable, about slides_per_job each."""

import json

import pytest

from radpath.pathology.shards import plan_outputs, shard_count, shard_plan, shard_slides


@pytest.mark.parametrize(("n", "per_job", "count"),
                         [(0, 16, 1), (16, 16, 1), (17, 16, 2), (2000, 16, 128), (2000, 64, 32),
                          (10000, 64, 256), (3, 1, 4)])
def test_shard_count_is_the_power_of_two_keeping_the_mean_at_most_slides_per_job(n, per_job,
                                                                                 count):
    assert shard_count(n, per_job) == count


def test_every_slide_is_in_one_shard_of_about_slides_per_job():
    slides = [f"P{i:05d}_S{j}" for i in range(1000) for j in range(2)]
    shards = shard_slides(slides, 16)
    assert len(shards) == 128 and sorted(sum(shards.values(), [])) == sorted(slides)
    sizes = [len(members) for members in shards.values()]
    assert sum(sizes) / len(sizes) == pytest.approx(15.6, abs=0.1) and max(sizes) < 32


def test_adding_a_slide_moves_no_other_slide_and_reordering_moves_nothing():
    slides = [f"S{i}" for i in range(100)]
    before = shard_slides(slides, 16)
    after = shard_slides([*reversed(slides), "S100"], 16)
    where = {s: shard for shard, members in after.items() for s in members}
    assert all(where[s] == shard for shard, members in before.items() for s in members)
    changed = [shard for shard in after if set(after[shard]) != set(before.get(shard, []))]
    assert changed == [where["S100"]]


def test_one_slide_per_job_keeps_the_slide_ids_as_shard_names():
    assert shard_slides(["b", "a"], 1) == {"a": ["a"], "b": ["b"]}


def test_the_plan_gives_each_shard_job_its_inputs_slides_and_outputs():
    plan = shard_plan(["A", "B"], 16, {"A": "a.svs", "B": "b.svs"}, {"A": "", "B": "0.25"},
                      "tiles/{slide}/coords.h5", "emb/{shard}/{slide}.h5", ["w.safetensors"])
    assert list(plan) == ["0000"]
    job = plan["0000"]
    assert job["inputs"] == {"coords": ["tiles/A/coords.h5", "tiles/B/coords.h5"],
                             "extra": ["w.safetensors"]}
    assert json.loads(job["slides"]) == [
        {"slide_id": "A", "slide": "a.svs", "mpp": None, "coords": "tiles/A/coords.h5",
         "out": "emb/0000/A.h5"},
        {"slide_id": "B", "slide": "b.svs", "mpp": 0.25, "coords": "tiles/B/coords.h5",
         "out": "emb/0000/B.h5"}]
    assert plan_outputs(plan) == {"A": "emb/0000/A.h5", "B": "emb/0000/B.h5"}
