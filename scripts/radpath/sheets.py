"""Sample sheets: loading, per-row schema validation and cross-row checks.

Every problem becomes one line naming the sheet, the row, the column and what is wrong;
all problems of a sheet are reported together so a user fixes them in one pass.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import yaml

ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
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


def validate_rows(df: pd.DataFrame, schema: dict, name: str, id_column: str) -> pd.DataFrame:
    """Validate each row against `schema`; return the sheet with typed columns.

    Columns the schema does not describe (acquisition parameters, covariates) are kept as
    they are. Problems are collected for all rows and raised together.

    Large cohorts: every cell is first checked column by column against the keywords in
    FAST_KEYWORDS (no per-row jsonschema call); only rows that fail there, or all rows when
    a column's schema uses other keywords, go through jsonschema, which words the messages.
    """
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    problems = [f"{name}: missing column '{col}'" for col in required if col not in df.columns]
    if problems:
        raise SheetError("\n".join(problems))
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
    if problems:
        raise SheetError("\n".join(problems))
    return pd.DataFrame(
        {col: [np.nan if v is OMITTED else v for v in values[col]] for col in columns},
        columns=columns,
    )


OMITTED = object()
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
    if column and column.endswith("_event"):
        hint = ""
        if isinstance(value, str) and value.strip().lower() in EVENT_WORDS:
            hint = " (text is not accepted: code death/progression as 1, censored as 0)"
        return f"column '{column}' must be 0 or 1, got {value!r}{hint}"
    if error.validator == "pattern":
        return f"column '{column}' value {value!r} is not a valid ID (letters, digits, . _ -)"
    if error.validator in ("exclusiveMinimum", "minimum"):
        return f"column '{column}' must be > {error.validator_value}, got {value!r}"
    if error.validator == "type":
        return f"column '{column}' must be a {error.validator_value}, got {value!r}"
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
        df[col] = [p if os.path.isabs(p) else os.path.normpath(base / p) for p in df[col]]
    return df


def check_files_exist(df: pd.DataFrame, columns: list[str], id_column: str, name: str) -> list[str]:
    problems = []
    ids = df[id_column].tolist()
    for col in columns:
        for i, path in enumerate(df[col].tolist()):
            if not os.path.exists(path):
                problems.append(f"{_where(name, i, ids[i])}{col} file {path} does not exist")
    return problems


def load_patients(path: str | os.PathLike, schema_path: str | os.PathLike) -> pd.DataFrame:
    name = Path(path).name
    df = validate_rows(read_sheet(path, name), load_schema(schema_path), name, "patient_id")
    df = resolve_paths(df, ["ct", "mask"], path)
    problems = check_unique(df, "patient_id", name)
    problems += check_files_exist(df, ["ct", "mask"], "patient_id", name)
    if problems:
        raise SheetError("\n".join(problems))
    df["mask_label"] = df["mask_label"].astype(int)
    return df.set_index("patient_id", drop=False)


def load_clinical(
    path: str | os.PathLike,
    schema_path: str | os.PathLike,
    patient_ids: list[str],
    covariates: list[dict],
    batch_covariates: list[str] = (),
) -> pd.DataFrame:
    """Clinical sheet checked against the patients it must cover and the covariates used."""
    name = Path(path).name
    df = validate_rows(read_sheet(path, name), load_schema(schema_path), name, "patient_id")
    problems = check_unique(df, "patient_id", name)
    known = set(df["patient_id"])
    missing = [pid for pid in patient_ids if pid not in known]
    if missing:
        problems.append(f"{name}: no clinical row for patient(s) {', '.join(missing)}")
    for endpoint in ("os", "pfs"):
        events = df[f"{endpoint}_event"].astype(int)
        if len(df) and events.sum() == 0:
            problems.append(f"{name}: column '{endpoint}_event' has no events (all censored)")
    needed = [c["name"] for c in covariates] + [c for c in batch_covariates]
    for column in dict.fromkeys(needed):
        if column not in df.columns:
            problems.append(f"{name}: missing covariate column '{column}' (named in the config)")
    for cov in covariates:
        if cov["name"] in df.columns and cov["type"] == "numeric":
            numbers = pd.to_numeric(df[cov["name"]].replace("", np.nan), errors="coerce")
            for i in np.flatnonzero(numbers.isna() & (df[cov["name"]] != "")):
                problems.append(
                    f"{_where(name, i, df['patient_id'][i])}covariate '{cov['name']}' must be "
                    f"numeric, got {df[cov['name']][i]!r}"
                )
    if problems:
        raise SheetError("\n".join(problems))
    return df.set_index("patient_id", drop=False)


def load_slides(
    path: str | os.PathLike, schema_path: str | os.PathLike, patient_ids: list[str]
) -> pd.DataFrame:
    name = Path(path).name
    df = validate_rows(read_sheet(path, name), load_schema(schema_path), name, "slide_id")
    df = resolve_paths(df, ["path"], path)
    problems = check_unique(df, "slide_id", name)
    known = set(patient_ids)
    for i, (slide_id, patient_id) in enumerate(zip(df["slide_id"], df["patient_id"], strict=True)):
        if patient_id not in known:
            problems.append(
                f"{_where(name, i, slide_id)}patient_id {patient_id!r} is not in the patients sheet"
            )
    problems += check_files_exist(df, ["path"], "slide_id", name)
    if problems:
        raise SheetError("\n".join(problems))
    if "mpp" not in df.columns:
        df["mpp"] = None
    return df.set_index("slide_id", drop=False)
