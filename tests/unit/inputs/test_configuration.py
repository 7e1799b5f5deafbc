"""The config schema: strict (unknown keys are errors), complete defaults equal to
config/config.yaml, and messages that name the key by its path."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import yaml

from radpath.inputs import configuration
from radpath.inputs.configuration import default_config, synthesis_plan

REPO = Path(__file__).resolve().parents[3]
SCHEMA_PATH = REPO / "config" / "schemas" / "config.schema.yaml"
SCHEMA = configuration.load_schema(SCHEMA_PATH)
# Keys whose config.yaml value is the demo cohort's, not a default for every cohort.
COHORT_SPECIFIC = {"patients", "clinical", "slides", "covariates", "models",
                   "harmonization.covariates", "treatment.column", "treatment.treated",
                   "deep_ct.pretrain.patients", "deep_ct.pretrain.clinical"}
# PathoSig's network and sample sizes: config.yaml has the demo's tiny values (2 CPUs, ~15
# minutes), the schema the study's (K = 50, 224 px, ...), so a config that leaves them out
# gets the study's.
DEMO_SIZED = {f"pathology.pathosig.{key}" for key in (
    "n_clusters", "epochs", "batch_size", "input_size", "tiles_per_slide", "mosaic_tiles")} | {
    f"deep_ct.{key}" for key in ("cubes.grid", "networks", "width", "folds", "epochs",
                                 "batch_size", "pretrain.epochs")} | {"evaluation.optimism_bootstrap"} | {
    f"synthesis.{key}" for key in (
        "enabled", "size", "channels", "attention_levels", "norm_groups", "head_channels",
        "steps", "batch_size", "learning_rate", "ema_decay", "log_every", "checkpoint_every",
        "threads", "sampling_steps", "layouts", "fresh.patients", "fresh.shift_mm", "fresh.scale")}


def schema_defaults(schema: dict, prefix: str = ""):
    """(path, default) of every property with a default, recursively."""
    for key, spec in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        if "default" in spec and "properties" not in spec:
            yield path, spec["default"]
        yield from schema_defaults(spec, f"{path}.")


def config_leaves(config: dict, schema: dict, prefix: str = ""):
    """(path, value) of every config.yaml key that is not itself a section."""
    for key, value in config.items():
        path = f"{prefix}{key}"
        spec = schema.get("properties", {}).get(key, {})
        if isinstance(value, dict) and "properties" in spec:
            yield from config_leaves(value, spec, f"{path}.")
        else:
            yield path, value


def test_shipped_config_is_valid():
    configuration.load_config(default_config(), SCHEMA_PATH)


def test_schema_defaults_equal_config_yaml():
    shipped = dict(config_leaves(default_config(), SCHEMA))
    defaults = dict(schema_defaults(SCHEMA))
    for path, value in defaults.items():
        if path in COHORT_SPECIFIC | DEMO_SIZED:
            continue
        assert path in shipped, f"{path} has a schema default but is not in config.yaml"
        assert shipped[path] == value, f"{path}: schema {value!r} vs config.yaml {shipped[path]!r}"
    undocumented = set(shipped) - set(defaults) - COHORT_SPECIFIC - {"demo"}
    assert not undocumented, f"config.yaml keys without a schema default: {undocumented}"


def test_minimal_config_gets_every_default():
    minimal = {"patients": "p.tsv", "clinical": "c.tsv", "reference_model": "clinical",
               "models": {"clinical": {"clinical": True, "blocks": []}}}
    config = configuration.load_config(copy.deepcopy(minimal), SCHEMA_PATH)
    shipped = default_config()
    for key in DEMO_SIZED | {"deep_ct.pretrain.patients", "deep_ct.pretrain.clinical"}:
        *parents, leaf = key.split(".")
        for tree in (shipped, config):
            functools.reduce(dict.__getitem__, parents, tree).pop(leaf)
    for section in ("selection", "evaluation", "pathology", "ct", "cox", "split", "deep_ct"):
        assert config[section] == shipped[section], section
    assert config["slides"] == "" and config["covariates"] == []


@pytest.mark.parametrize(("change", "expected"), [
    (lambda c: c.update(selction={}),
     "config: selction: unknown key; did you mean 'selection'?"),
    (lambda c: c["evaluation"].update(boostrap=10),
     "config: evaluation.boostrap: unknown key; did you mean 'bootstrap'?"),
    (lambda c: c["pathology"]["tiles"].update(patchsize=256),
     "config: pathology.tiles.patchsize: unknown key; did you mean 'patch_size'?"),
    (lambda c: c["models"]["clinical"].update(block=[]),
     "config: models.clinical.block: unknown key; did you mean 'blocks'?"),
    (lambda c: c.update(seed=-1), "config: seed: must be >= 0, got -1"),
    (lambda c: c["treatment"].update(treated=""), "config: treatment.treated: required with"),
    (lambda c: c["treatment"].update(models=["nope"]),
     "config: treatment.models: 'nope' is not one of the models"),
    (lambda c: c["models"]["pathosig"]["selection"].update(method="lasso"),
     "config: models.pathosig.selection.method: must be one of ['penalized', 'univariate']"),
    (lambda c: c["models"]["pathosig"]["selection"].update(univariate_pp=0.1),
     "config: models.pathosig.selection.univariate_pp: unknown key; did you mean 'univariate_p'"),
    (lambda c: c["models"]["pathosig"].update(blocks=["pathomics_hpcs"]),
     "config: models.pathosig.blocks.0: must be one of"),
    (lambda c: c["pathology"]["pathosig"].update(n_clusters=1),
     "config: pathology.pathosig.n_clusters: must be >= 2, got 1"),
    (lambda c: c["selection"].update(alpha_rule="best"),
     "config: selection.alpha_rule: must be one of ['min', '1se'], got 'best'"),
    (lambda c: c["pathology"]["tiles"].update(mpp=0), "config: pathology.tiles.mpp: must be > 0"),
    (lambda c: c["pathology"]["embedding"].update(batch_size="64"),
     "config: pathology.embedding.batch_size: must be an integer, got '64'"),
    (lambda c: c["ct"].update(resample_spacing=[1, 1]),
     "config: ct.resample_spacing: must be null or a list of 3 numbers >= 0"),
    (lambda c: c.pop("models"), "config: models: required key is missing"),
    (lambda c: c.update(reference_model="nope"),
     "config: reference_model: 'nope' is not one of the models"),
    (lambda c: c.update(slides=""),
     "config: models.pathomics_embedding: uses pathomics_embedding but no slides sheet"),
    (lambda c: c["pathology"]["embedding"].update(num_workers=4),
     "config: pathology.embedding.num_workers: 4 DataLoader workers need pathology.threads >= 5"),
    (lambda c: c["pathology"]["embedding"].update(model="uni"),
     "config: pathology.embedding.model: unknown key; renamed 'encoder'"),
    (lambda c: c["pathology"]["embedding"].update(checkpoint="/w/uni.pt"),
     "config: pathology.embedding.checkpoint: unknown key; replaced by 'weights'"),
    (lambda c: c["pathology"]["embedding"].update(encoder="hf-hub:MahmoodLab/UNI"),
     "config: pathology.embedding.encoder: 'hf-hub:MahmoodLab/UNI' must be a plain name"),
])
def test_problems_name_the_key_by_its_path(change, expected):
    assert_problem(change, expected)


def assert_problem(change, expected: str) -> None:
    """`change` applied to the shipped config gives a problem line starting `expected`."""
    config = default_config()
    change(config)
    with pytest.raises(configuration.ConfigError) as info:
        configuration.load_config(config, SCHEMA_PATH)
    assert any(line.startswith(expected) for line in str(info.value).splitlines()), (
        str(info.value)
    )


def test_all_schema_problems_are_reported_together():
    config = default_config()
    config["selection"]["selction"] = 1
    config["seed"] = -2
    config["cox"]["penalizer"] = -1
    with pytest.raises(configuration.ConfigError) as info:
        configuration.load_config(config, SCHEMA_PATH)
    assert len(str(info.value).splitlines()) == 3


def test_a_models_selection_changes_only_its_own_keys():
    config = configuration.load_config(default_config(), SCHEMA_PATH)
    config["models"]["clinical"]["selection"] = {"near_zero_variance": {"freq_ratio": 5.0}}
    pathosig = configuration.model_selection(config, "pathosig")
    assert pathosig["method"] == "univariate" and pathosig["univariate_p"] == 0.05
    assert pathosig["cv_folds"] == config["selection"]["cv_folds"]
    clinical = configuration.model_selection(config, "clinical")
    assert clinical["near_zero_variance"] == {"freq_ratio": 5.0, "unique_fraction": 0.1}
    assert clinical["method"] == "penalized"
    assert config["selection"]["near_zero_variance"]["freq_ratio"] == 19.0  # not changed


def test_config_yaml_is_plain_yaml_with_comments_only():
    text = (REPO / "config" / "config.yaml").read_text(encoding="utf-8")
    assert yaml.safe_load(text) == default_config()


OS_DFS = {"os": {"time": "os_time", "event": "os_event"},
          "dfs": {"time": "dfs_months", "event": "dfs_status", "not_after": "os"}}


def test_endpoints_are_declared_by_name_with_their_columns():
    config = configuration.load_config(default_config(), SCHEMA_PATH)
    assert config["endpoints"] == {
        "os": {"time": "os_time", "event": "os_event", "not_after": None},
        "pfs": {"time": "pfs_time", "event": "pfs_event", "not_after": "os"},
    }
    config = default_config()
    config["endpoints"] = copy.deepcopy(OS_DFS)
    config["evaluation"]["tau"] = {"dfs": 24}
    config = configuration.load_config(config, SCHEMA_PATH)
    assert config["endpoints"]["dfs"] == {"time": "dfs_months", "event": "dfs_status",
                                          "not_after": "os"}
    assert list(config["endpoints"]) == ["os", "dfs"]
    # The normalized form is itself valid, and normalizing it again changes nothing.
    again = configuration.load_config(copy.deepcopy(config), SCHEMA_PATH)
    assert again["endpoints"] == config["endpoints"]


def test_the_list_form_means_name_time_and_name_event_columns():
    config = default_config()
    config["endpoints"] = ["pfs", "os"]
    config = configuration.load_config(config, SCHEMA_PATH)
    assert config["endpoints"] == {
        "pfs": {"time": "pfs_time", "event": "pfs_event", "not_after": None},
        "os": {"time": "os_time", "event": "os_event", "not_after": None},
    }
    config = default_config()
    config["endpoints"] = ["dfs"]  # any plain name, not only os and pfs
    assert configuration.load_config(config, SCHEMA_PATH)["endpoints"]["dfs"]["time"] == "dfs_time"


def with_endpoints(endpoints, **evaluation):
    def change(config):
        config["endpoints"] = endpoints
        config["evaluation"].update(evaluation)
    return change


@pytest.mark.parametrize(("change", "expected"), [
    (with_endpoints({**OS_DFS, "dfs": {**OS_DFS["dfs"], "not_after": "pfs"}}),
     "config: endpoints.dfs.not_after: 'pfs' is not another declared endpoint (declared: os, dfs)"),
    (with_endpoints({**OS_DFS, "dfs": {**OS_DFS["dfs"], "not_after": "dfs"}}),
     "config: endpoints.dfs.not_after: 'dfs' is not another declared endpoint"),
    (with_endpoints({**OS_DFS, "dfs": {**OS_DFS["dfs"], "time": "os_time"}}),
     "config: endpoints.dfs.time: column 'os_time' is already endpoints.os.time"),
    (with_endpoints({**OS_DFS, "dfs": {**OS_DFS["dfs"], "event": "dfs_months"}}),
     "config: endpoints.dfs.event: column 'dfs_months' is already endpoints.dfs.time"),
    (with_endpoints({**OS_DFS, "dfs": {**OS_DFS["dfs"], "time": "split"}}),
     "config: endpoints.dfs.time: 'split' is not an outcome column"),
    (with_endpoints({**OS_DFS, "dfs": {**OS_DFS["dfs"], "time": "age"}}),
     "config: endpoints.dfs.time: column 'age' is also a covariate"),
    (with_endpoints(OS_DFS, tau={"os": 36, "pfs": 24}),
     "config: evaluation.tau.pfs: 'pfs' is not a declared endpoint (declared: os, dfs)"),
    (with_endpoints(["os"], tau={"pfs": 24}),
     "config: evaluation.tau.pfs: 'pfs' is not a declared endpoint (declared: os)"),
    (with_endpoints({**OS_DFS, "dfs": {**OS_DFS["dfs"], "not_befor": "os"}}),
     "config: endpoints.dfs.not_befor: unknown key; did you mean 'not_after'?"),
    (with_endpoints({"os": {"time": "os_time"}}), "config: endpoints.os.event: required key is missing"),
    (with_endpoints({"OS": {"time": "os_time", "event": "os_event"}}),
     "config: endpoints: 'OS' must be a plain name"),
    (with_endpoints(["os", "dfs/1"]), "config: endpoints: 'dfs/1' must be a plain name"),
    (with_endpoints("os"), "config: endpoints: must be an object or array, got 'os'"),
    (with_endpoints({}), "config: endpoints: must be entries at least 1"),
    (with_endpoints(["os", "os"]), "config: endpoints: ['os', 'os'] has non-unique elements"),
])
def test_endpoint_problems_name_the_key(change, expected):
    assert_problem(change, expected)


def set_deep_ct(**values):
    def change(config):
        config["deep_ct"].update(values)
    return change


@pytest.mark.parametrize("change, expected", [
    (set_deep_ct(init=__file__),
     "config: deep_ct.pretrain.patients: set together with deep_ct.init; choose one start"),
    (set_deep_ct(pretrain={"patients": "p.tsv", "clinical": ""}),
     "config: deep_ct.pretrain: patients and clinical sheets go together"),
    (set_deep_ct(pretrain={"patients": "p.tsv", "clinical": "c.tsv",
                           "endpoints": {"dfs": {"time": "t", "event": "e"}}}),
     "config: deep_ct.pretrain.endpoints.dfs: 'dfs' is not a declared endpoint (declared: "
     "os, pfs)"),
    (set_deep_ct(init="no/such/weights.pt", pretrain={"patients": "", "clinical": ""}),
     "config: deep_ct.init: checkpoint file no/such/weights.pt does not exist"),
])
def test_deep_ct_start_problems_name_the_key(change, expected):
    assert_problem(change, expected)


def test_a_pretrained_start_trains_a_random_start_twin_of_every_network():
    deep_ct = default_config()["deep_ct"] | {"networks": ["resnet10", "densenet121"]}
    assert configuration.deep_ct_start(deep_ct) == "pretrain"
    members = configuration.deep_ct_members(deep_ct)
    assert members == {
        "resnet10": {"network": "resnet10", "edges_mm": None, "start": "pretrain",
                     "compares": None},
        "densenet121": {"network": "densenet121", "edges_mm": None, "start": "pretrain",
                        "compares": None},
        "resnet10-random_start": {"network": "resnet10", "edges_mm": None, "start": "random",
                                  "compares": "resnet10"},
        "densenet121-random_start": {"network": "densenet121", "edges_mm": None,
                                     "start": "random", "compares": "densenet121"},
    }
    alone = configuration.deep_ct_members(deep_ct | {"compare_random_start": False})
    assert list(alone) == ["resnet10", "densenet121"]
    random = deep_ct | {"pretrain": {**deep_ct["pretrain"], "patients": "", "clinical": ""}}
    assert configuration.deep_ct_start(random) == "random"
    assert [spec["start"] for spec in configuration.deep_ct_members(random).values()] == [
        "random", "random"]
    init = random | {"init": "weights.pt"}
    assert set(configuration.deep_ct_members(init)) == set(members)
    # What a training job depends on leaves the start's source and the report's keys out.
    settings = configuration.deep_ct_training_settings(deep_ct)
    assert not set(settings) & set(configuration.DEEP_CT_CONFIG_ONLY_KEYS)
    assert settings["epochs"] == deep_ct["epochs"]


def test_pretraining_endpoint_columns_default_to_the_runs():
    config = default_config()
    config["deep_ct"]["pretrain"]["endpoints"] = {"os": {"time": "months", "event": "died"}}
    config = configuration.load_config(config, SCHEMA_PATH)
    assert configuration.pretrain_endpoints(config) == {
        "os": {"time": "months", "event": "died", "not_after": None},
        "pfs": {"time": "pfs_time", "event": "pfs_event", "not_after": None},
    }


def test_synthetic_augmentation_trains_twins_without_it_and_needs_the_synthesis_branch():
    deep_ct = default_config()["deep_ct"] | {"synthetic_augmentation": True,
                                             "pretrain": {"patients": "", "clinical": ""}}
    members = configuration.deep_ct_members(deep_ct)
    assert members == {
        "resnet10": {"network": "resnet10", "edges_mm": None, "start": "random",
                     "compares": None, "synthetic": True},
        "resnet10-without_synthetic": {"network": "resnet10", "edges_mm": None,
                                       "start": "random", "compares": "resnet10",
                                       "twin": "without_synthetic", "synthetic": False},
    }
    pretrained = configuration.deep_ct_members(default_config()["deep_ct"]
                                               | {"synthetic_augmentation": True})
    assert pretrained["resnet10-random_start"]["synthetic"] is True
    assert set(pretrained) == {"resnet10", "resnet10-random_start",
                               "resnet10-without_synthetic"}
    assert_problem(lambda c: (c["deep_ct"].update(synthetic_augmentation=True),
                              c["synthesis"].update(enabled=False)),
                   "config: deep_ct.synthetic_augmentation needs synthesis.enabled")


def test_the_plan_uses_training_patients_only_and_holds_some_out():
    train = [f"P{i:03d}" for i in range(30)]
    settings = {"holdout_fraction": 0.2, "layouts": 4, "draws": 2,
                "fresh": {"patients": 2}}
    plan = synthesis_plan(train, settings, 42)
    assert set(plan["fit"]) | set(plan["heldout"]) == set(train)
    assert not set(plan["fit"]) & set(plan["heldout"]) and plan["heldout"]
    real = [(p, d) for v, p, d in plan["samples"] if v == "real"]
    assert len(real) == 8 and {p for p, _ in real} <= set(plan["fit"])
    assert {p for v, p, _ in plan["samples"] if v == "heldout"} == set(plan["heldout"])
    assert plan == synthesis_plan(list(reversed(train)), settings, 42)
    # adding patients never moves existing ones between fit and held out
    more = synthesis_plan(train + ["Q1", "Q2"], settings, 42)
    assert set(plan["heldout"]) <= set(more["heldout"])
