"""Sample sheets: loading, per-row schema validation and cross-row checks.

Every problem becomes one line naming the sheet, the row, the column and what is wrong;
all problems of a sheet are reported together so a user fixes them in one pass.
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import yaml

from radpath.inputs.configuration import pretrain_endpoints

ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
PATIENT_DICOM_COLUMNS = ("ct_series_uid", "mask_roi", "mask_segment")
EVENT_WORDS = {"alive", "dead", "deceased", "censored", "yes", "no", "true", "false", "event"}


class SheetError(ValueError):
    """One or more problems in a sample sheet; the message has one line per problem."""


def load_schema(path: str | os.PathLike) -> dict:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def read_sheet(path: str | os.PathLike, name: str) -> pd.DataFrame:
    """Read a TSV as strings (no type guessing), strip cells, drop blank lines."""
    path = Path(path)
    if not path.is_file():
        hint = " (run `make demo-data` to write the demo cohort)" if "demo_data" in str(path) else ""
        raise SheetError(f"{name}: sheet {path} does not exist{hint}")
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment=None)
    df.columns = [c.strip() for c in df.columns]
    df = df.apply(lambda col: col.str.strip())
    df = df[~(df == "").all(axis=1)].reset_index(drop=True)
    return df


def _coerce(value: str, spec: dict):
    """Turn a TSV cell into the JSON type its schema asks for (None for empty cells)."""
    if value == "":
        return None
    types = spec.get("type")
    types = types if isinstance(types, list) else [types]
    if "integer" in types:
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() else number
    if "number" in types:
        try:
            return float(value)
        except ValueError:
            return value
    return value


def validate_rows(
    df: pd.DataFrame, schema: dict, name: str, id_column: str, problems: list[str] | None = None
) -> pd.DataFrame:
    """Validate each row against `schema`; return the sheet with typed columns.

    Columns the schema does not describe (acquisition parameters, covariates) are kept as
    they are. Problems are collected for all rows and raised together, or, when a
    `problems` list is given, appended to it (the typed sheet is then returned anyway, so
    later checks can go on and report theirs in the same run).

    Large cohorts: every cell is first checked column by column against the keywords in
    FAST_KEYWORDS (no per-row jsonschema call); only rows that fail there, or all rows when
    a column's schema uses other keywords, go through jsonschema, which words the messages.
    """
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    collect = problems is not None
    problems = problems if collect else []
    missing_columns = [col for col in required if col not in df.columns]
    problems += [f"{name}: missing column '{col}'" for col in missing_columns]
    if missing_columns:
        if not collect:
            raise SheetError("\n".join(problems))
        df = df.assign(**{col: "" for col in missing_columns})
    columns = list(df.columns) + [
        c for c in properties if c not in df.columns and "default" in properties[c]
    ]
    values = {}  # column -> typed cells; OMITTED marks an empty cell without a default
    for col in columns:
        spec = properties.get(col)
        cells = df[col].tolist() if col in df.columns else [""] * len(df)
        if spec is None:
            values[col] = cells
            continue
        typed = [_coerce(value, spec) for value in cells]
        fill = spec.get("default", OMITTED)
        values[col] = [fill if value is None else value for value in typed]

    suspect = np.zeros(len(df), dtype=bool)
    for col, spec in properties.items():
        if col in values:
            suspect |= ~_fast_valid(values[col], spec, col in required)
    nonfinite = _nonfinite_numbers(values, properties, name, df, id_column)
    validator = jsonschema.Draft202012Validator(schema)
    for i in np.flatnonzero(suspect):
        record = {col: values[col][i] for col in columns if values[col][i] is not OMITTED}
        where = _where(name, i, df[id_column].iat[i] if id_column in df.columns else "")
        reported = set()
        for error in sorted(validator.iter_errors(record), key=lambda e: list(e.path)):
            column = error.path[0] if error.path else None
            if column in reported:
                continue  # one message per cell, e.g. not both "type" and "enum"
            reported.add(column)
            problems.append(f"{where}{_describe(error, record)}")
    problems += nonfinite
    if problems and not collect:
        raise SheetError("\n".join(problems))
    return pd.DataFrame(
        {col: [np.nan if v is OMITTED else v for v in values[col]] for col in columns},
        columns=columns,
    )


OMITTED = object()


def _nonfinite_numbers(values: dict, properties: dict, name: str, df, id_column: str) -> list[str]:
    """NaN and infinity parse as numbers and pass JSON-schema bounds; a sheet must not hold them."""
    problems = []
    for col, spec in properties.items():
        types = spec.get("type", [])
        if col not in values or not {"number", "integer"} & set(np.atleast_1d(types)):
            continue
        for i, value in enumerate(values[col]):
            if isinstance(value, float) and not math.isfinite(value):
                row_id = df[id_column].iat[i] if id_column in df.columns else ""
                problems.append(
                    f"{_where(name, i, row_id)}column '{col}' must be a finite number, "
                    f"got {df[col].iat[i]!r}"
                )
    return problems
FAST_KEYWORDS = {
    "type", "pattern", "minLength", "enum", "minimum", "exclusiveMinimum", "maximum",
    "exclusiveMaximum", "default", "description",
}


def _fast_valid(values: list, spec: dict, required: bool) -> np.ndarray:
    """Per cell: True when jsonschema would certainly accept it under `spec`.

    False only means "let jsonschema decide" (it also words the message), so this may be
    stricter than jsonschema but never looser.
    """
    if set(spec) - FAST_KEYWORDS:
        return np.zeros(len(values), dtype=bool)
    types = spec.get("type", [])
    types = set(types if isinstance(types, list) else [types])
    pattern = re.compile(spec["pattern"]) if "pattern" in spec else None
    enum = spec.get("enum")
    bounds = [(spec.get(k), op) for k, op in (
        ("minimum", float.__ge__), ("exclusiveMinimum", float.__gt__),
        ("maximum", float.__le__), ("exclusiveMaximum", float.__lt__),
    ) if k in spec]

    def valid(value) -> bool:
        if value is OMITTED:
            return not required
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if types and not (
            ("string" in types and isinstance(value, str))
            or ("number" in types and is_number)
            or ("integer" in types and is_number and float(value).is_integer())
        ):
            return False
        if isinstance(value, str):
            if pattern is not None and not pattern.search(value):
                return False
            if len(value) < spec.get("minLength", 0):
                return False
        if enum is not None and not (
            not isinstance(value, bool) and any(value == e and not isinstance(e, bool) for e in enum)
        ):
            return False
        if is_number and bounds:
            number = float(value)
            if not all(op(number, float(limit)) for limit, op in bounds):
                return False
        return True

    return np.fromiter((valid(v) for v in values), dtype=bool, count=len(values))


def _where(name: str, index: int, row_id: str) -> str:
    # Row numbers count the header as line 1, as a spreadsheet shows them.
    label = f" ({row_id})" if row_id else ""
    return f"{name} line {index + 2}{label}: "


def _describe(error: jsonschema.ValidationError, record: dict) -> str:
    column = error.path[0] if error.path else None
    if error.validator == "required":
        missing = error.message.split("'")[1]
        return f"column '{missing}' is empty"
    value = record.get(column)
    if error.schema.get("enum") == [0, 1]:  # an event column ($defs.event)
        hint = ""
        if isinstance(value, str) and value.strip().lower() in EVENT_WORDS:
            hint = " (text is not accepted: code death/progression as 1, censored as 0)"
        return f"column '{column}' must be 0 or 1, got {value!r}{hint}"
    if error.validator == "pattern" and column == "ct_series_uid":
        return (
            f"column '{column}' value {value!r} is not a DICOM UID (digits separated by dots, "
            "at most 64 characters)"
        )
    if error.validator == "pattern":
        return f"column '{column}' value {value!r} is not a valid ID (letters, digits, . _ -)"
    if error.validator in ("exclusiveMinimum", "minimum"):
        return f"column '{column}' must be > {error.validator_value}, got {value!r}"
    if error.validator == "type":
        article = "an" if str(error.validator_value)[:1] in "aeiou" else "a"
        return f"column '{column}' must be {article} {error.validator_value}, got {value!r}"
    if error.validator == "enum":
        return f"column '{column}' must be one of {error.validator_value}, got {value!r}"
    return f"column '{column}': {error.message}"


def check_unique(df: pd.DataFrame, column: str, name: str) -> list[str]:
    duplicated = df[column][df[column].duplicated(keep=False)]
    return [
        f"{name}: {column} {value!r} appears on lines "
        + ", ".join(str(i + 2) for i in duplicated.index[duplicated == value])
        for value in sorted(set(duplicated))
    ]


def resolve_paths(df: pd.DataFrame, columns: list[str], sheet_path: str | os.PathLike) -> pd.DataFrame:
    """Make relative paths in the sheet relative to the sheet's folder."""
    base = Path(sheet_path).parent
    df = df.copy()
    for col in columns:
        # A cell that is not text (a sheet without a header row) is reported by the schema.
        df[col] = [p if not isinstance(p, str) or os.path.isabs(p) else os.path.normpath(base / p)
                   for p in df[col]]
    return df


def check_files_exist(df: pd.DataFrame, columns: list[str], id_column: str, name: str) -> list[str]:
    problems = []
    ids = df[id_column].tolist()
    for col in columns:
        for i, path in enumerate(df[col].tolist()):
            if isinstance(path, str) and not os.path.exists(path):
                problems.append(f"{_where(name, i, ids[i])}{col} file {path} does not exist")
    return problems


def _finish(problems: list[str], collect: list[str] | None) -> None:
    """Raise the problems found (standalone use), or leave them in the caller's list."""
    if collect is None and problems:
        raise SheetError("\n".join(problems))


def load_patients(
    path: str | os.PathLike,
    schema_path: str | os.PathLike,
    problems: list[str] | None = None,
    image_columns: Sequence[str] = (),
) -> pd.DataFrame:
    """The patients sheet, typed, paths resolved, indexed by patient_id.

    `image_columns`: more image columns the run reads (config deep_ct.cubes.channels, e.g.
    MRI sequences registered to the CT); they must be in the sheet, files that exist.
    Raises SheetError with every problem; with a `problems` list, appends to it instead.
    """
    name = Path(path).name
    found: list[str] = []
    df = validate_rows(read_sheet(path, name), load_schema(schema_path), name, "patient_id", found)
    absent = [c for c in image_columns if c not in df.columns]
    found += [
        f"{name}: column '{c}' (config deep_ct.cubes.channels) is not in the sheet"
        for c in absent
    ]
    images = ["ct", "mask", *(c for c in image_columns if c not in absent)]
    df = resolve_paths(df, images, path)
    found += check_unique(df, "patient_id", name)
    found += check_files_exist(df, images, "patient_id", name)
    _finish(found, problems)
    if problems is not None:
        problems += found
    df["mask_label"] = pd.to_numeric(df["mask_label"], errors="coerce").fillna(1).astype(int)
    lung = pd.to_numeric(df["lung_label"], errors="coerce") if "lung_label" in df.columns else (
        pd.Series(np.nan, index=df.index))
    df["lung_label"] = ["" if pd.isna(v) else str(int(v)) for v in lung]
    for column in PATIENT_DICOM_COLUMNS:  # optional; '' when absent or blank
        cells = df[column] if column in df.columns else [""] * len(df)
        df[column] = ["" if not isinstance(v, str) else v for v in cells]
    return df.set_index("patient_id", drop=False)


def clinical_schema(base: Mapping, endpoints: Mapping[str, Mapping], columns) -> dict:
    """The clinical sheet's schema with the declared endpoints' time and event columns.

    Only columns the sheet has are added: a missing one is reported once (by
    :func:`missing_endpoint_columns`), not once per row.
    """
    schema = copy.deepcopy(dict(base))
    for spec in endpoints.values():
        for role in ("time", "event"):
            if spec[role] in columns:
                schema["properties"][spec[role]] = copy.deepcopy(base["$defs"][role])
                schema["required"].append(spec[role])
    return schema


def missing_endpoint_columns(endpoints: Mapping[str, Mapping], columns, name: str) -> list[str]:
    return [
        f"{name}: missing column '{spec[role]}' (endpoints.{endpoint}.{role} in the config)"
        for endpoint, spec in endpoints.items()
        for role in ("time", "event")
        if spec[role] not in columns
    ]


def load_clinical(
    path: str | os.PathLike,
    schema_path: str | os.PathLike,
    patient_ids: list[str],
    covariates: list[dict],
    batch_covariates: list[str] = (),
    missing_covariates: str = "error",
    problems: list[str] | None = None,
    *,
    endpoints: Mapping[str, Mapping],
) -> pd.DataFrame:
    """Clinical sheet checked against the patients it must cover, the declared endpoints
    (config `endpoints`, normalized: {name: {time, event, not_after}}) and the covariates.

    Outcome columns no endpoint declares are kept but not checked. A blank covariate cell
    is a problem with `missing_covariates="error"`; with "impute" it is left blank (NaN
    for numeric covariates) for the cohort step to fill from training patients. ComBat
    covariates follow the same rule.
    """
    name = Path(path).name
    sheet = read_sheet(path, name)
    found = missing_endpoint_columns(endpoints, sheet.columns, name)
    schema = clinical_schema(load_schema(schema_path), endpoints, sheet.columns)
    df = validate_rows(sheet, schema, name, "patient_id", found)
    found += check_unique(df, "patient_id", name)
    known = set(df["patient_id"])
    missing = [pid for pid in patient_ids if pid not in known]
    if missing:
        found.append(f"{name}: no clinical row for patient(s) {', '.join(missing)}")
    for spec in endpoints.values():
        if spec["event"] not in df.columns:
            continue
        events = pd.to_numeric(df[spec["event"]], errors="coerce")
        if len(df) and events.isin([0, 1]).all() and events.sum() == 0:
            found.append(f"{name}: column '{spec['event']}' has no events (all censored)")
    found += _endpoint_order_problems(df, name, endpoints)
    found += _covariate_problems(df, name, covariates, batch_covariates, missing_covariates)
    _finish(found, problems)
    if problems is not None:
        problems += found
    return df.set_index("patient_id", drop=False)


def _endpoint_order_problems(
    df: pd.DataFrame, name: str, endpoints: Mapping[str, Mapping]
) -> list[str]:
    """Times later than the endpoint's `not_after` endpoint's (e.g. progression-free
    survival outlasting overall survival: death ends both)."""
    problems = []
    for endpoint, spec in endpoints.items():
        other = spec.get("not_after")
        if other is None or other not in endpoints:
            continue
        column, limit_column = spec["time"], endpoints[other]["time"]
        if column not in df.columns or limit_column not in df.columns:
            continue
        time = pd.to_numeric(df[column], errors="coerce")
        limit = pd.to_numeric(df[limit_column], errors="coerce")
        valid = (time > 0) & (limit > 0) & np.isfinite(time) & np.isfinite(limit)
        later = np.flatnonzero((valid & (time > limit * (1 + 1e-9))).to_numpy())
        problems += [
            f"{_where(name, i, df['patient_id'].iat[i])}{column} {df[column].iat[i]} is after "
            f"{limit_column} {df[limit_column].iat[i]} ({endpoint} ends no later than {other}: "
            f"endpoints.{endpoint}.not_after in the config)"
            for i in later
        ]
    return problems


def _covariate_problems(
    df: pd.DataFrame,
    name: str,
    covariates: list[dict],
    batch_covariates: list[str],
    missing_covariates: str,
) -> list[str]:
    problems = []
    needed = [c["name"] for c in covariates] + list(batch_covariates)
    for column in dict.fromkeys(needed):
        if column not in df.columns:
            problems.append(f"{name}: missing covariate column '{column}' (named in the config)")
    numeric = {c["name"] for c in covariates if c["type"] == "numeric"}
    for column in dict.fromkeys(needed):
        if column not in df.columns:
            continue
        cells = df[column]
        blank = cells == ""
        if missing_covariates == "error":
            for i in np.flatnonzero(blank.to_numpy()):
                problems.append(
                    f"{_where(name, i, df['patient_id'].iat[i])}covariate '{column}' is blank "
                    "(fill it, or set missing_covariates: impute to use the training patients' "
                    "median / most frequent level)"
                )
        if column in numeric:
            numbers = pd.to_numeric(cells.replace("", np.nan), errors="coerce")
            bad = ~blank & ~np.isfinite(numbers.fillna(np.inf))
            for i in np.flatnonzero(bad.to_numpy()):
                problems.append(
                    f"{_where(name, i, df['patient_id'].iat[i])}covariate '{column}' must be "
                    f"a finite number, got {cells.iat[i]!r}"
                )
    for cov in covariates:
        if cov["type"] != "categorical" or cov["name"] not in df.columns:
            continue
        reference = _level_text(cov["reference"])
        levels = {_level_text(v) for v in df[cov["name"]] if v != ""}
        if levels and reference not in levels:
            problems.append(
                f"{name}: covariate '{cov['name']}': reference level {reference!r} does not "
                f"occur (levels: {', '.join(sorted(levels))})"
            )
    return problems


def treatment_problems(df: pd.DataFrame, name: str, treatment: Mapping) -> list[str]:
    """The treatment column of the treatment-benefit analysis: present, no blank cell, and
    both treated and untreated patients."""
    column = treatment.get("column")
    if not column:
        return []
    if column not in df.columns:
        return [f"{name}: missing treatment column '{column}' (config treatment.column)"]
    values = df[column].astype(str).str.strip()
    problems = [
        f"{_where(name, i, df['patient_id'].iat[i])}treatment '{column}' is blank"
        for i in np.flatnonzero((values == "").to_numpy())
    ]
    treated = values == str(treatment.get("treated"))
    if len(df) and (treated.all() or not treated.any()):
        problems.append(
            f"{name}: treatment column '{column}' needs treated ({treatment.get('treated')!r}, "
            f"config treatment.treated) and untreated patients; its values: "
            f"{', '.join(sorted(set(values)))}"
        )
    return problems


def _level_text(value) -> str:
    """A category label as text; 2.0 and '2.0' become '2' (as radpath.survival.modeling does)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(int(number)) if number.is_integer() else str(value)


def load_slides(
    path: str | os.PathLike,
    schema_path: str | os.PathLike,
    patient_ids: list[str],
    problems: list[str] | None = None,
) -> pd.DataFrame:
    name = Path(path).name
    found: list[str] = []
    df = validate_rows(read_sheet(path, name), load_schema(schema_path), name, "slide_id", found)
    df = resolve_paths(df, ["path"], path)
    found += check_unique(df, "slide_id", name)
    known = set(patient_ids)
    for i, (slide_id, patient_id) in enumerate(zip(df["slide_id"], df["patient_id"], strict=True)):
        if patient_id not in known:
            found.append(
                f"{_where(name, i, slide_id)}patient_id {patient_id!r} is not in the patients sheet"
            )
    found += check_files_exist(df, ["path"], "slide_id", name)
    _finish(found, problems)
    if problems is not None:
        problems += found
    if "mpp" not in df.columns:
        df["mpp"] = None
    return df.set_index("slide_id", drop=False)


@dataclass
class Cohort:
    """The validated sheets of one run (pretrain_*: the deep CT pretraining cohort's, when
    config deep_ct.pretrain names one)."""

    patients: pd.DataFrame
    clinical: pd.DataFrame
    slides: pd.DataFrame | None
    pretrain_patients: pd.DataFrame | None = None
    pretrain_clinical: pd.DataFrame | None = None


def load_pretrain_cohort(config: dict, schemas_dir: str | os.PathLike, patients: pd.DataFrame,
                         problems: list[str]) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The deep CT pretraining cohort's sheets (config deep_ct.pretrain): the same patients
    sheet columns as the run's (CT, mask, the cube channels), a clinical sheet with each
    endpoint's pretraining columns. A CT or mask file that is also one of the run's patients'
    is a problem: those patients would train the start of every fold, validation included."""
    pretrain = (config.get("deep_ct") or {}).get("pretrain") or {}
    if not pretrain.get("patients") or not pretrain.get("clinical"):
        return None
    if not any("deep_ct" in spec["blocks"] for spec in config["models"].values()):
        return None
    schemas = Path(schemas_dir)
    found: list[str] = []
    sheet = load_patients(pretrain["patients"], schemas / "patients.schema.yaml", found,
                          image_columns=config["deep_ct"]["cubes"]["channels"])
    clinical = load_clinical(pretrain["clinical"], schemas / "clinical.schema.yaml",
                             list(sheet.index), [], problems=found,
                             endpoints=pretrain_endpoints(config))
    name = Path(pretrain["patients"]).name
    found += [f"{name}: pretraining patient {pid}'s {column} {path} is also patient {twin}'s "
              "in the run's own sheet (a patient cannot be in both cohorts)"
              for pid, column, path, twin in shared_image_files(sheet, patients)]
    problems += [f"deep_ct.pretrain: {line}" for line in found]
    return sheet, clinical


def _cohort_sheets(config: dict, schemas: Path, patients_path: str, clinical_path: str,
                   slides_path: str, problems: list[str]
                   ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """A cohort's patients, clinical and (optional) slides sheets checked against the run's
    config: image columns, endpoints, covariates, the harmonization batch column."""
    patients = load_patients(
        patients_path, schemas / "patients.schema.yaml", problems,
        image_columns=config.get("deep_ct", {}).get("cubes", {}).get("channels", []),
    )
    clinical = load_clinical(
        clinical_path,
        schemas / "clinical.schema.yaml",
        list(patients.index),
        config["covariates"],
        config["harmonization"]["covariates"],
        config["missing_covariates"],
        problems,
        endpoints=config["endpoints"],
    )
    batch_column = config["harmonization"]["batch_column"]
    if batch_column not in patients.columns:
        problems.append(
            f"{Path(patients_path).name}: harmonization batch column '{batch_column}' "
            "(config harmonization.batch_column) is not a column of the patients sheet"
        )
    else:
        blank = patients.index[patients[batch_column] == ""]
        if len(blank):
            problems.append(
                f"{Path(patients_path).name}: batch column '{batch_column}' is blank for "
                f"patient(s) {', '.join(blank)}"
            )
    slides = None
    if slides_path:
        slides = load_slides(
            slides_path, schemas / "slides.schema.yaml", list(patients.index), problems
        )
    return patients, clinical, slides


def load_cohort(config: dict, schemas_dir: str | os.PathLike) -> Cohort:
    """Every sheet named in the (validated) config, with every problem of every sheet
    reported together in one SheetError."""
    schemas = Path(schemas_dir)
    problems: list[str] = []
    patients, clinical, slides = _cohort_sheets(
        config, schemas, config["patients"], config["clinical"], config["slides"], problems
    )
    problems += treatment_problems(clinical, Path(config["clinical"]).name,
                                   config.get("treatment") or {})
    pretrain = load_pretrain_cohort(config, schemas, patients, problems)
    if problems:
        raise SheetError("\n".join(problems))
    return Cohort(patients, clinical, slides, *(pretrain or (None, None)))


def load_external_cohorts(config: dict, schemas_dir: str | os.PathLike) -> dict[str, Cohort]:
    """The external cohorts of `snakemake score` (config score.cohorts), each checked like
    the run's own sheets; every problem of every cohort in one SheetError."""
    problems: list[str] = []
    cohorts = {}
    for name, spec in (config.get("score") or {}).get("cohorts", {}).items():
        found: list[str] = []
        cohorts[name] = Cohort(*_cohort_sheets(config, Path(schemas_dir), spec["patients"],
                                               spec["clinical"], spec.get("slides", ""), found))
        problems += [f"score.cohorts.{name}: {line}" for line in found]
    if problems:
        raise SheetError("\n".join(problems))
    return cohorts


def shared_image_files(sheet: pd.DataFrame, others: pd.DataFrame):
    """(patient, column, path, other patient) for each CT or mask file of `sheet` that is
    also one of `others`' (the same file, whatever the path that names it)."""
    for column in ("ct", "mask"):
        theirs = {os.path.realpath(path): pid for pid, path in others[column].items()}
        for pid, path in sheet[column].items():
            twin = theirs.get(os.path.realpath(path))
            if twin is not None:
                yield pid, column, path, twin


def training_overlap(external: pd.DataFrame, run_patients: pd.DataFrame,
                     split: Mapping[str, str], name: str) -> list[str]:
    """External patients (`snakemake score`) whose CT or mask file is a training patient's
    of the run: their scores would be fitted ones, not an external validation."""
    train = run_patients[[split.get(pid) == "train" for pid in run_patients.index]]
    return [f"score.cohorts.{name}: patient {pid}'s {column} {path} is training patient "
            f"{twin}'s: the models were fitted on it"
            for pid, column, path, twin in shared_image_files(external, train)]
