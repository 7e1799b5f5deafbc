"""The workflow configuration: defaults from the schema, strict validation, cross-key checks.

`load_config` is what rules/common.smk calls. Every problem becomes one line naming the key
by its full path (`config: selection.selction: unknown key; did you mean 'selection'?`), and
all problems are reported together.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import jsonschema
import yaml

PATHOLOGY_BLOCKS = frozenset({"pathomics_embedding", "pathomics_morphology", "pathomics_hpc"})


# Keys of earlier versions: the unknown-key message says what replaced them.
RENAMED_KEYS = {
    "pathology.embedding.model": "; renamed 'encoder'",
    "pathology.embedding.pretrained": (
        "; replaced by 'weights' (random | hub | the path of a local state dict)"
    ),
    "pathology.embedding.checkpoint": "; replaced by 'weights' (the path of the local file)",
}


class ConfigError(ValueError):
    """One or more problems in the configuration; one line per problem."""


def load_schema(path: str | os.PathLike) -> dict:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def fill_defaults(config: dict, schema: Mapping) -> dict:
    """`config` with every missing key that has a schema default filled in, recursively.

    Defaults apply inside objects that are present or themselves defaulted; list items and
    user-named entries (models) are not given keys they do not have.
    """
    for key, spec in schema.get("properties", {}).items():
        if key not in config and "default" in spec:
            config[key] = copy.deepcopy(spec["default"])
        if isinstance(config.get(key), dict) and "properties" in spec:
            fill_defaults(config[key], spec)
    return config


def schema_problems(config: Mapping, schema: Mapping) -> list[str]:
    """One line per schema violation, naming the key's path."""
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.path))):
        problems.extend(_describe(error))
    return problems


def _path(parts) -> str:
    return ".".join(str(p) for p in parts) or "(top level)"


def _describe(error: jsonschema.ValidationError) -> Iterator[str]:
    where = f"config: {_path(error.absolute_path)}"
    value = error.instance
    kind = error.validator
    if kind == "additionalProperties" and isinstance(value, Mapping):
        allowed = list(error.schema.get("properties", {}))
        for key in sorted(set(value) - set(allowed)):
            key_path = _path([*error.absolute_path, key])
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            hint = RENAMED_KEYS.get(key_path, hint)
            yield f"config: {key_path}: unknown key{hint} (allowed: {', '.join(allowed)})"
        return
    if kind == "required":
        missing = error.message.split("'")[1]
        yield f"config: {_path([*error.absolute_path, missing])}: required key is missing"
        return
    if kind == "type":
        wanted = error.validator_value
        wanted = " or ".join(wanted) if isinstance(wanted, list) else wanted
        yield f"{where}: must be {_article(wanted)}, got {value!r}"
        return
    if kind == "enum":
        yield f"{where}: must be one of {error.validator_value}, got {value!r}"
        return
    bounds = {
        "minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<",
        "minItems": "at least", "maxItems": "at most", "minLength": "length at least",
        "minProperties": "entries at least",
    }  # fmt: skip
    if kind in bounds:
        yield f"{where}: must be {bounds[kind]} {error.validator_value}, got {value!r}"
        return
    if kind == "oneOf" and error.absolute_path and error.absolute_path[-1] == "resample_spacing":
        yield (f"{where}: must be null or a list of 3 numbers >= 0 (mm; 0 keeps that axis' "
               f"native spacing), got {value!r}")
        return
    if kind == "pattern" and error.absolute_path and error.absolute_path[-1] == "encoder":
        yield (
            f"{where}: {value!r} must be a plain name (letters, digits, _ . -): it names the "
            "folder results/pathology/<encoder>/; for a hub model, stage its weights "
            "(weights: hub) under a plain name"
        )
        return
    if kind == "pattern" and error.absolute_path and error.absolute_path[0] == "endpoints":
        yield (
            f"config: endpoints: {value!r} must be a plain name (lower-case letters, digits, "
            "_; a letter first): it names the folder results/models/<endpoint>/"
        )
        return
    if kind == "propertyNames":
        yield f"{where}: invalid name {value!r} ({error.message})"
        return
    yield f"{where}: {error.message}"


def _article(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


def cross_key_problems(config: Mapping) -> list[str]:
    """Checks the schema cannot express: names that must refer to each other."""
    problems = []
    models = config.get("models") or {}
    if config.get("reference_model") not in models:
        problems.append(
            f"config: reference_model: '{config.get('reference_model')}' is not one of the "
            f"models ({', '.join(models)})"
        )
    if not config.get("slides"):
        for name, spec in models.items():
            used = PATHOLOGY_BLOCKS & set(spec.get("blocks", []))
            if used:
                problems.append(
                    f"config: models.{name}: uses {', '.join(sorted(used))} but no slides sheet "
                    "is set (set `slides:` or leave this model out)"
                )
    treatment = config.get("treatment") or {}
    if treatment.get("column") and not treatment.get("treated"):
        problems.append(
            "config: treatment.treated: required with treatment.column (the column's value "
            "for treated patients)"
        )
    for name in treatment.get("models", []):
        if name not in models:
            problems.append(
                f"config: treatment.models: '{name}' is not one of the models ({', '.join(models)})"
            )
    covariate_names = [c.get("name") for c in config.get("covariates", [])]
    for name in sorted({n for n in covariate_names if covariate_names.count(n) > 1}):
        problems.append(f"config: covariates: '{name}' is listed more than once")
    problems += endpoint_problems(config)
    problems += deep_ct_problems(config)
    embedding = config.get("pathology", {}).get("embedding", {})
    threads = config.get("pathology", {}).get("threads", 1)
    workers = embedding.get("num_workers", 0)
    if workers and workers >= threads:
        problems.append(
            f"config: pathology.embedding.num_workers: {workers} DataLoader workers need "
            f"pathology.threads >= {workers + 1} (the workers plus the job's main process), "
            f"got {threads}"
        )
    return problems


def declared_endpoints(endpoints) -> dict[str, dict]:
    """The `endpoints` setting as {name: {"time", "event", "not_after"}}.

    The mapping form names each endpoint's clinical sheet columns; the list form
    [os, pfs] means the columns <name>_time and <name>_event, with no `not_after` (an
    order between two endpoints is the user's to declare). The result is itself a valid
    mapping form, so normalizing twice changes nothing.
    """
    if isinstance(endpoints, Mapping):
        return {
            name: {"time": spec["time"], "event": spec["event"],
                   "not_after": spec.get("not_after")}
            for name, spec in endpoints.items()
        }
    return {
        name: {"time": f"{name}_time", "event": f"{name}_event", "not_after": None}
        for name in endpoints
    }


# Clinical sheet columns radpath itself reads; an endpoint cannot use them.
RESERVED_CLINICAL_COLUMNS = ("patient_id", "split")


def endpoint_problems(config: Mapping) -> list[str]:
    """Declared endpoints that contradict each other or other keys."""
    endpoints = declared_endpoints(config.get("endpoints") or {})
    problems = []
    declared = ", ".join(endpoints)
    users: dict[str, list[str]] = {}  # sheet column -> key paths that name it
    for name, spec in endpoints.items():
        for role in ("time", "event"):
            users.setdefault(spec[role], []).append(f"endpoints.{name}.{role}")
        other = spec.get("not_after")
        if other is not None and (other not in endpoints or other == name):
            problems.append(
                f"config: endpoints.{name}.not_after: '{other}' is not another declared "
                f"endpoint (declared: {declared})"
            )
    covariates = {c.get("name") for c in config.get("covariates", [])}
    for column, paths in users.items():
        if len(paths) > 1:
            problems.append(
                f"config: {paths[1]}: column '{column}' is already {paths[0]} (each endpoint "
                "needs its own time and event columns)"
            )
        if column in RESERVED_CLINICAL_COLUMNS:
            problems.append(f"config: {paths[0]}: '{column}' is not an outcome column")
        elif column in covariates:
            problems.append(
                f"config: {paths[0]}: column '{column}' is also a covariate (an outcome "
                "cannot predict itself)"
            )
    for name in config.get("evaluation", {}).get("tau", {}):
        if name not in endpoints:
            problems.append(
                f"config: evaluation.tau.{name}: '{name}' is not a declared endpoint "
                f"(declared: {declared})"
            )
    return problems


def deep_ct_problems(config: Mapping) -> list[str]:
    """The deep CT start (init checkpoint or pretraining cohort) checked against the rest."""
    deep_ct = config.get("deep_ct") or {}
    models = config.get("models") or {}
    if not any("deep_ct" in spec.get("blocks", []) for spec in models.values()):
        return []
    problems = []
    init = deep_ct.get("init", "")
    pretrain = deep_ct.get("pretrain") or {}
    if init and not os.path.isfile(init):
        problems.append(f"config: deep_ct.init: checkpoint file {init} does not exist")
    if init and pretrain.get("patients"):
        problems.append("config: deep_ct.pretrain.patients: set together with deep_ct.init; "
                        "choose one start (a checkpoint file or a pretraining cohort)")
    if bool(pretrain.get("patients")) != bool(pretrain.get("clinical")):
        problems.append("config: deep_ct.pretrain: patients and clinical sheets go together "
                        "(set both, or neither)")
    if deep_ct.get("synthetic_augmentation"):
        if not (config.get("synthesis") or {}).get("enabled"):
            problems.append("config: deep_ct.synthetic_augmentation needs synthesis.enabled "
                            "(the synthetic CTs come from that branch)")
        if (deep_ct.get("cubes") or {}).get("channels"):
            problems.append("config: deep_ct.synthetic_augmentation: synthetic CTs have no "
                            "extra images (deep_ct.cubes.channels must be empty)")
    endpoints = declared_endpoints(config.get("endpoints") or {})
    for name in pretrain.get("endpoints") or {}:
        if name not in endpoints:
            problems.append(f"config: deep_ct.pretrain.endpoints.{name}: '{name}' is not a "
                            f"declared endpoint (declared: {', '.join(endpoints)})")
    return problems


def deep_ct_start(deep_ct: Mapping) -> str:
    """Where the configured networks start: `pretrain` (a cohort), `init` (a checkpoint
    file) or `random`."""
    if (deep_ct.get("pretrain") or {}).get("patients"):
        return "pretrain"
    return "init" if deep_ct.get("init") else "random"


def pretrain_endpoints(config: Mapping) -> dict[str, dict]:
    """{endpoint: {time, event}}: each endpoint's columns in the pretraining clinical sheet
    (deep_ct.pretrain.endpoints, else the endpoint's own columns)."""
    chosen = config["deep_ct"]["pretrain"].get("endpoints") or {}
    return {
        name: {"time": (chosen.get(name) or spec)["time"],
               "event": (chosen.get(name) or spec)["event"], "not_after": None}
        for name, spec in declared_endpoints(config["endpoints"]).items()
    }


RANDOM_START_SUFFIX = "-random_start"
WITHOUT_SYNTHETIC_SUFFIX = "-without_synthetic"
# Keys of the config section deep_ct that do not change how one network trains: a training
# job's settings leave them out, so changing them re-runs no training (the member spec
# carries synthetic_augmentation).
DEEP_CT_CONFIG_ONLY_KEYS = ("cubes", "threads", "init", "pretrain", "compare_random_start",
                            "gradcam_patients", "synthetic_augmentation")


def deep_ct_training_settings(deep_ct: Mapping) -> dict:
    """The config section deep_ct without DEEP_CT_CONFIG_ONLY_KEYS."""
    return {k: v for k, v in deep_ct.items() if k not in DEEP_CT_CONFIG_ONLY_KEYS}


def deep_ct_members(deep_ct: Mapping) -> dict[str, dict]:
    """The networks trained per endpoint and fold, by name: each network on every scale
    stacked as channels (view `channels`), or one per network and scale (`per_scale`, e.g.
    `resnet10-37.5mm`), soft-voted. {name: {network, edges_mm (None = all scales), start,
    compares, twin, synthetic}}: `start` is deep_ct_start's; with a start other than random
    and `compare_random_start`, each member has a twin `<name>-random_start` trained from a
    random start (`compares`: the member it twins; None for the members that form the
    block), so the report can show what the pretrained start changed. With
    synthetic_augmentation, the members train with synthetic CTs of their fit patients
    (`synthetic: True`) and each has a twin `<name>-without_synthetic` (`twin:
    without_synthetic`) trained without them. (Keys only where they apply: a member's spec
    is a job parameter, and an unchanged spec re-runs nothing.)"""
    start = deep_ct_start(deep_ct)
    synthetic = bool(deep_ct.get("synthetic_augmentation", False))
    members = {}
    for network in deep_ct["networks"]:
        if deep_ct["view"] == "channels":
            members[network] = {"network": network, "edges_mm": None}
        else:
            for edge in deep_ct["cubes"]["edges_mm"]:
                members[f"{network}-{edge:g}mm"] = {"network": network, "edges_mm": [edge]}
    primary = {name: {**spec, "start": start, "compares": None}
               | ({"synthetic": True} if synthetic else {}) for name, spec in members.items()}
    twins = {}
    if start != "random" and deep_ct.get("compare_random_start", True):
        twins |= {f"{name}{RANDOM_START_SUFFIX}": {**spec, "start": "random", "compares": name}
                  for name, spec in primary.items()}
    if synthetic:
        twins |= {f"{name}{WITHOUT_SYNTHETIC_SUFFIX}": {**spec, "compares": name,
                                                        "twin": "without_synthetic",
                                                        "synthetic": False}
                  for name, spec in primary.items()}
    return primary | twins


def model_selection(config: Mapping, model: str) -> dict:
    """The selection settings of one model: the top-level ones with the model's changes."""
    merged = copy.deepcopy(dict(config["selection"]))
    for key, value in (config["models"][model].get("selection") or {}).items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_config(config: dict, schema_path: str | os.PathLike) -> dict:
    """Fill schema defaults into `config` (in place) and validate it; raise ConfigError."""
    schema = load_schema(schema_path)
    if not isinstance(config, dict):
        raise ConfigError(f"config: expected a mapping of keys, got {type(config).__name__}")
    fill_defaults(config, schema)
    problems = schema_problems(config, schema)
    if not problems:
        config["endpoints"] = declared_endpoints(config["endpoints"])
        problems = cross_key_problems(config)
    if problems:
        raise ConfigError("\n".join(problems))
    return config


def models_without_blocks(models: dict[str, dict], excluded: dict[str, str]
                          ) -> tuple[list[str], dict[str, str]]:
    """The models that use none of the `excluded` blocks ({block: why}), and for the others
    why they are left out."""
    kept, left_out = [], {}
    for name, spec in models.items():
        blocks_by_why: dict[str, list[str]] = {}
        for block in spec["blocks"]:
            if block in excluded:
                blocks_by_why.setdefault(excluded[block], []).append(block)
        if blocks_by_why:
            left_out[name] = "; ".join(
                f"block{'s' if len(blocks) > 1 else ''} {', '.join(blocks)}: {why}"
                for why, blocks in blocks_by_why.items())
        else:
            kept.append(name)
    return kept, left_out


# Blocks made from slides: an external cohort without a slides sheet cannot give them.
SLIDE_BLOCKS = frozenset({"pathomics_embedding", "pathomics_morphology", "pathomics_hpc"})


def scorable_models(models: dict[str, dict], has_slides: bool) -> tuple[list[str], dict[str, str]]:
    """The models an external cohort (`snakemake score`) is scored with (those needing
    slides only when it has a slides sheet), and why the others are not."""
    needs_slides = "needs slides; the cohort has no slides sheet"
    return models_without_blocks(
        models, {} if has_slides else dict.fromkeys(SLIDE_BLOCKS, needs_slides))


# Blocks made by networks trained on the run's training patients: repeated CV would have to
# retrain them in every fold (GPU hours x folds x repeats), so their models are not
# cross-validated (radpath.survival.repeated_cv).
NOT_CROSS_VALIDATED = {
    "deep_ct": "its networks would be retrained in every fold",
    "pathomics_hpc": "its PathoSig network would be retrained in every fold",
}


def cross_validated_models(models: dict[str, dict]) -> tuple[list[str], dict[str, str]]:
    """The models repeated CV refits (validation.method: repeated_cv), and why not the others."""
    return models_without_blocks(models, NOT_CROSS_VALIDATED)


# The synthesis settings a trained DDPM depends on (radpath.synthesis.diffusion.train_ddpm).
SYNTHESIS_TRAINING_KEYS = (
    "network", "size", "channels", "attention_levels", "num_res_blocks", "norm_groups",
    "head_channels", "timesteps", "schedule", "steps", "batch_size", "learning_rate",
    "ema_decay", "precision", "log_every")


def synthesis_plan(train_ids: Sequence[str], settings: Mapping, seed: int) -> dict:
    """The synthesis branch's patients and jobs, from the training patients alone.

    Each training patient gets a seeded draw in [0, 1) from its ID: those below
    holdout_fraction are held out of the DDPM and reconstructed to judge it (at least one
    when the fraction is > 0 and there are two patients or more); the rest ("fit") train
    it. `layouts` (0 = all) and fresh.patients fit patients, in draw order, get their own
    and a fresh layout sampled `draws` times. Returns {fit, heldout, samples: [(variant,
    patient, draw)]}.
    """
    def draw(pid: str) -> float:
        digest = hashlib.sha256(f"radpath-synthesis:{seed}:{pid}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2.0**64

    ordered = sorted(train_ids, key=draw)
    heldout = [p for p in ordered if draw(p) < settings["holdout_fraction"]]
    if settings["holdout_fraction"] > 0 and not heldout and len(ordered) >= 2:
        heldout = ordered[:1]
    if len(heldout) == len(ordered):
        heldout = heldout[:-1]
    fit = [p for p in ordered if p not in heldout]
    own = fit[: settings["layouts"]] if settings["layouts"] else fit
    fresh = fit[: settings["fresh"]["patients"]]
    draws = range(1, settings["draws"] + 1)
    samples = [(variant, p, d) for variant, ids in (("real", own), ("fresh", fresh),
                                                     ("heldout", heldout))
               for p in ids for d in draws]
    return {"fit": sorted(fit), "heldout": sorted(heldout), "samples": samples}


CONFIG_FILE = Path(__file__).resolve().parents[2] / "config" / "config.yaml"


@functools.cache
def _load() -> dict:
    with open(CONFIG_FILE, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def default_config() -> dict:
    """A fresh copy of config/config.yaml (callers may modify it)."""
    return copy.deepcopy(_load())
