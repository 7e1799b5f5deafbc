"""Sample sheet validation: every problem is one line naming sheet, line, patient and column."""

import math
from pathlib import Path

import pytest

from radpath.inputs import sheets

REPO = Path(__file__).resolve().parents[3]
SCHEMAS = REPO / "config" / "schemas"
COVARIATES = [{"name": "age", "type": "numeric"},
              {"name": "stage", "type": "categorical", "reference": "I"}]
# config/config.yaml's endpoints, as radpath.inputs.configuration.load_config normalizes them.
ENDPOINTS = {
    "os": {"time": "os_time", "event": "os_event", "not_after": None},
    "pfs": {"time": "pfs_time", "event": "pfs_event", "not_after": "os"},
}


def write(path: Path, rows: list[list[str]]) -> Path:
    path.write_text("\n".join("\t".join(r) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture()
def patients_sheet(tmp_path):
    (tmp_path / "ct").mkdir()
    for pid in ("P1", "P2"):
        (tmp_path / "ct" / f"{pid}.nii.gz").write_bytes(b"x")
        (tmp_path / "ct" / f"{pid}_mask.nii.gz").write_bytes(b"x")
    return write(tmp_path / "patients.tsv", [
        ["patient_id", "ct", "mask", "scanner"],
        ["P1", "ct/P1.nii.gz", "ct/P1_mask.nii.gz", "A"],
        ["P2", "ct/P2.nii.gz", "ct/P2_mask.nii.gz", "B"],
    ])


CLINICAL_HEADER = ["patient_id", "age", "stage", "os_time", "os_event", "pfs_time", "pfs_event"]


def load_clinical(path, ids=("P1", "P2"), endpoints=ENDPOINTS):
    return sheets.load_clinical(path, SCHEMAS / "clinical.schema.yaml", list(ids), COVARIATES,
                                endpoints=endpoints)


def test_patients_sheet_paths_resolved_and_label_defaulted(patients_sheet):
    df = sheets.load_patients(patients_sheet, SCHEMAS / "patients.schema.yaml")
    assert list(df.index) == ["P1", "P2"]
    assert df.at["P1", "ct"] == str(patients_sheet.parent / "ct" / "P1.nii.gz")
    assert df["mask_label"].tolist() == [1, 1]
    assert df.at["P2", "scanner"] == "B"


def test_patients_sheet_reports_all_problems_with_line_and_id(patients_sheet):
    text = patients_sheet.read_text(encoding="utf-8").replace("P2\tct/P2.nii.gz", "P1\tct/missing.nii.gz")
    text += "bad id!\tct/P1.nii.gz\tct/P1_mask.nii.gz\tA\n"
    patients_sheet.write_text(text)
    with pytest.raises(sheets.SheetError) as info:
        sheets.load_patients(patients_sheet, SCHEMAS / "patients.schema.yaml")
    message = str(info.value)
    assert "patients.tsv line 4 (bad id!): column 'patient_id'" in message
    with pytest.raises(sheets.SheetError) as info:
        text = patients_sheet.read_text(encoding="utf-8").splitlines()[:-1]
        patients_sheet.write_text("\n".join(text) + "\n")
        sheets.load_patients(patients_sheet, SCHEMAS / "patients.schema.yaml")
    message = str(info.value)
    assert "patient_id 'P1' appears on lines 2, 3" in message
    assert "patients.tsv line 3 (P1): ct file" in message and "missing.nii.gz does not exist" in message


def test_clinical_text_event_is_rejected_with_hint(tmp_path):
    path = write(tmp_path / "clinical.tsv", [
        CLINICAL_HEADER,
        ["P1", "60", "I", "12.5", "Alive", "10", "1"],
        ["P2", "70", "II", "20", "1", "5", "0"],
    ])
    with pytest.raises(sheets.SheetError) as info:
        load_clinical(path)
    assert str(info.value) == (
        "clinical.tsv line 2 (P1): column 'os_event' must be 0 or 1, got 'Alive' "
        "(text is not accepted: code death/progression as 1, censored as 0)"
    )


def test_clinical_checks_times_coverage_and_covariates(tmp_path):
    path = write(tmp_path / "clinical.tsv", [
        CLINICAL_HEADER,
        ["P1", "sixty", "I", "0", "1", "10", "1"],
    ])
    with pytest.raises(sheets.SheetError) as info:
        load_clinical(path)
    lines = str(info.value).splitlines()
    assert "clinical.tsv line 2 (P1): column 'os_time' must be > 0, got 0.0" in lines
    path = write(tmp_path / "clinical.tsv", [
        CLINICAL_HEADER, ["P1", "sixty", "I", "3", "1", "2", "1"],
    ])
    with pytest.raises(sheets.SheetError) as info:
        load_clinical(path)
    lines = str(info.value).splitlines()
    assert "clinical.tsv: no clinical row for patient(s) P2" in lines
    assert "clinical.tsv line 2 (P1): covariate 'age' must be a finite number, got 'sixty'" in lines


def test_clinical_valid_sheet_is_typed(tmp_path):
    path = write(tmp_path / "clinical.tsv", [
        CLINICAL_HEADER + ["split"],
        ["P1", "60", "I", "12.5", "0", "10", "1", "train"],
        ["P2", "70", "II", "20", "1", "5", "0", "validation"],
    ])
    df = load_clinical(path)
    assert df.at["P1", "os_time"] == 12.5
    assert df.at["P2", "os_event"] == 1
    assert df.at["P2", "split"] == "validation"


def test_slides_sheet_unknown_patient_and_duplicate(tmp_path):
    (tmp_path / "s.svs").write_bytes(b"x")
    path = write(tmp_path / "slides.tsv", [
        ["slide_id", "patient_id", "path"],
        ["S1", "P1", "s.svs"],
        ["S1", "P9", "s.svs"],
    ])
    with pytest.raises(sheets.SheetError) as info:
        sheets.load_slides(path, SCHEMAS / "slides.schema.yaml", ["P1"])
    lines = str(info.value).splitlines()
    assert "slides.tsv: slide_id 'S1' appears on lines 2, 3" in lines
    assert "slides.tsv line 3 (S1): patient_id 'P9' is not in the patients sheet" in lines


CELLS = ["", "P1", "P-1.a", "_bad", "a b", "0", "1", "2", "-1", "1.0", "1.5", "0.0", "1e3",
         "nan", "inf", "-inf", "Alive", "train", "validation", "test", "x"]


@pytest.mark.parametrize("schema_name", ["patients", "clinical", "slides"])
def test_column_wise_checks_accept_exactly_what_jsonschema_accepts(schema_name):
    """The fast column-wise path must never accept a row that jsonschema rejects (and may
    only send valid rows to jsonschema, which then accepts them)."""
    import random

    import jsonschema
    import pandas as pd

    schema = sheets.load_schema(SCHEMAS / f"{schema_name}.schema.yaml")
    if schema_name == "clinical":
        schema = sheets.clinical_schema(schema, ENDPOINTS, ["os_time", "os_event", "pfs_time",
                                                            "pfs_event"])
    properties = schema["properties"]
    validator = jsonschema.Draft202012Validator(schema)
    rng = random.Random(0)
    for _ in range(400):
        row = {col: rng.choice(CELLS) for col in properties}
        record = {}
        for col, cell in row.items():
            typed = sheets._coerce(cell, properties[col])
            typed = properties[col].get("default") if typed is None else typed
            if typed is not None:
                record[col] = typed
        # JSON schema bounds let NaN and infinity through; sheets reject them.
        finite = all(
            math.isfinite(v) for v in record.values() if isinstance(v, float)
        )
        expected_valid = finite and not list(validator.iter_errors(record))
        df = pd.DataFrame([row])
        try:
            sheets.validate_rows(df, schema, "s.tsv", next(iter(properties)))
            valid = True
        except sheets.SheetError:
            valid = False
        assert valid == expected_valid, row


def clinical_rows(*rows):
    return [CLINICAL_HEADER, *[list(r) for r in rows]]


def test_non_finite_times_are_rejected_at_parse_time(tmp_path):
    path = write(tmp_path / "clinical.tsv", clinical_rows(
        ["P1", "60", "I", "nan", "1", "10", "1"],
        ["P2", "70", "II", "20", "1", "inf", "0"],
    ))
    with pytest.raises(sheets.SheetError) as info:
        load_clinical(path)
    lines = str(info.value).splitlines()
    assert "clinical.tsv line 2 (P1): column 'os_time' must be a finite number, got 'nan'" in lines
    assert "clinical.tsv line 3 (P2): column 'pfs_time' must be a finite number, got 'inf'" in lines


def test_pfs_after_os_is_an_error(tmp_path):
    path = write(tmp_path / "clinical.tsv", clinical_rows(
        ["P1", "60", "I", "12", "1", "30", "1"],
        ["P2", "70", "II", "20", "1", "5", "1"],
    ))
    with pytest.raises(sheets.SheetError) as info:
        load_clinical(path)
    assert str(info.value) == (
        "clinical.tsv line 2 (P1): pfs_time 30.0 is after os_time 12.0 (pfs ends no later than "
        "os: endpoints.pfs.not_after in the config)"
    )


def test_blank_covariate_is_an_error_unless_imputation_is_chosen(tmp_path):
    path = write(tmp_path / "clinical.tsv", clinical_rows(
        ["P1", "", "I", "12", "1", "10", "1"],
        ["P2", "70", "", "20", "1", "5", "0"],
    ))
    with pytest.raises(sheets.SheetError) as info:
        load_clinical(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("clinical.tsv line 2 (P1): covariate 'age' is blank")
    assert "missing_covariates: impute" in lines[0]
    assert lines[1].startswith("clinical.tsv line 3 (P2): covariate 'stage' is blank")
    df = sheets.load_clinical(path, SCHEMAS / "clinical.schema.yaml", ["P1", "P2"], COVARIATES,
                              missing_covariates="impute", endpoints=ENDPOINTS)
    assert df.at["P1", "age"] == ""


def test_reference_level_must_occur(tmp_path):
    path = write(tmp_path / "clinical.tsv", clinical_rows(
        ["P1", "60", "II", "12", "1", "10", "1"],
        ["P2", "70", "III", "20", "1", "5", "0"],
    ))
    with pytest.raises(sheets.SheetError, match="reference level 'I' does not occur"):
        load_clinical(path)


def test_every_bad_line_of_every_sheet_in_one_error(patients_sheet, tmp_path):
    """One run reports the patients sheet's, the clinical sheet's and the slides sheet's
    problems together (not the first sheet's, nor the first line's, only)."""
    text = patients_sheet.read_text(encoding="utf-8")
    patients_sheet.write_text(
        text.replace("P2\tct/P2.nii.gz", "P2\tct/gone.nii.gz")
        + "_bad\tct/P1.nii.gz\tct/P1_mask.nii.gz\tA\n", encoding="utf-8")
    write(tmp_path / "clinical.tsv", clinical_rows(
        ["P1", "60", "I", "-3", "1", "10", "1"],
        ["P2", "70", "II", "20", "Alive", "5", "0"],
        ["_bad", "70", "II", "20", "1", "5", "0"],
    ))
    write(tmp_path / "slides.tsv", [["slide_id", "patient_id", "path"], ["S1", "P9", "no.svs"]])
    config = {
        "patients": str(patients_sheet), "clinical": str(tmp_path / "clinical.tsv"),
        "slides": str(tmp_path / "slides.tsv"), "covariates": COVARIATES,
        "harmonization": {"covariates": [], "batch_column": "scanner"},
        "missing_covariates": "error", "endpoints": ENDPOINTS,
    }
    with pytest.raises(sheets.SheetError) as info:
        sheets.load_cohort(config, SCHEMAS)
    message = str(info.value)
    for expected in (
        "patients.tsv line 4 (_bad): column 'patient_id'",
        "patients.tsv line 3 (P2): ct file",
        "clinical.tsv line 2 (P1): column 'os_time' must be > 0",
        "clinical.tsv line 3 (P2): column 'os_event' must be 0 or 1",
        "slides.tsv line 2 (S1): patient_id 'P9' is not in the patients sheet",
        "slides.tsv line 2 (S1): path file",
    ):
        assert expected in message, (expected, message)


def test_patients_dicom_columns_are_optional_text_and_uids_are_checked(patients_sheet):
    schema = SCHEMAS / "patients.schema.yaml"
    df = sheets.load_patients(patients_sheet, schema)
    assert [df[c].tolist() for c in sheets.PATIENT_DICOM_COLUMNS] == [["", ""]] * 3
    rows = patients_sheet.read_text(encoding="utf-8").splitlines()
    extra = ["\tct_series_uid\tmask_roi\tmask_segment", "\t1.2.840.5\tGTV 1\t", "\t\t\t2"]
    patients_sheet.write_text("".join(r + e + "\n" for r, e in zip(rows, extra, strict=True)),
                              encoding="utf-8")
    df = sheets.load_patients(patients_sheet, schema)
    assert df.loc["P1", list(sheets.PATIENT_DICOM_COLUMNS)].tolist() == ["1.2.840.5", "GTV 1", ""]
    assert df.loc["P2", list(sheets.PATIENT_DICOM_COLUMNS)].tolist() == ["", "", "2"]
    patients_sheet.write_text(
        patients_sheet.read_text(encoding="utf-8").replace("1.2.840.5", "1.2.840.05"),
        encoding="utf-8",
    )
    with pytest.raises(sheets.SheetError) as info:
        sheets.load_patients(patients_sheet, schema)
    assert str(info.value) == (
        "patients.tsv line 2 (P1): column 'ct_series_uid' value '1.2.840.05' is not a DICOM "
        "UID (digits separated by dots, at most 64 characters)"
    )


# A disease-free survival endpoint under the sheet's own column names, bounded by OS.
OS_DFS = {
    "os": {"time": "os_time", "event": "os_event", "not_after": None},
    "dfs": {"time": "dfs_months", "event": "dfs_status", "not_after": "os"},
}
OS_DFS_HEADER = ["patient_id", "age", "stage", "os_time", "os_event", "dfs_months", "dfs_status"]


def test_declared_endpoint_columns_are_checked_and_undeclared_ones_ignored(tmp_path):
    path = write(tmp_path / "clinical.tsv", [
        [*OS_DFS_HEADER, "pfs_time"],
        ["P1", "60", "I", "12.5", "0", "10", "1", "not a number"],
        ["P2", "70", "II", "20", "1", "5", "0", ""],
    ])
    df = load_clinical(path, endpoints=OS_DFS)
    assert df["dfs_months"].tolist() == [10.0, 5.0]
    assert df["dfs_status"].tolist() == [1, 0]
    assert df.at["P1", "pfs_time"] == "not a number"  # no endpoint declares it
    path = write(tmp_path / "clinical.tsv", [
        OS_DFS_HEADER,
        ["P1", "60", "I", "12.5", "0", "-1", "Alive"],
        ["P2", "70", "II", "20", "1", "inf", "2"],
    ])
    with pytest.raises(sheets.SheetError) as info:
        load_clinical(path, endpoints=OS_DFS)
    lines = str(info.value).splitlines()
    assert "clinical.tsv line 2 (P1): column 'dfs_months' must be > 0, got -1.0" in lines
    assert (
        "clinical.tsv line 2 (P1): column 'dfs_status' must be 0 or 1, got 'Alive' (text is "
        "not accepted: code death/progression as 1, censored as 0)"
    ) in lines
    assert "clinical.tsv line 3 (P2): column 'dfs_status' must be 0 or 1, got 2" in lines
    assert "clinical.tsv line 3 (P2): column 'dfs_months' must be a finite number, got 'inf'" in lines


def test_a_missing_declared_column_is_one_line_naming_the_config_key(tmp_path):
    path = write(tmp_path / "clinical.tsv", [
        ["patient_id", "age", "stage", "os_time", "os_event", "dfs_months"],
        ["P1", "60", "I", "12.5", "0", "10"],
        ["P2", "70", "II", "20", "1", "5"],
    ])
    with pytest.raises(sheets.SheetError) as info:
        load_clinical(path, endpoints=OS_DFS)
    assert str(info.value) == (
        "clinical.tsv: missing column 'dfs_status' (endpoints.dfs.event in the config)"
    )
    with pytest.raises(sheets.SheetError) as info:
        load_clinical(path)  # the shipped endpoints: pfs_time and pfs_event
    assert str(info.value).splitlines() == [
        "clinical.tsv: missing column 'pfs_time' (endpoints.pfs.time in the config)",
        "clinical.tsv: missing column 'pfs_event' (endpoints.pfs.event in the config)",
    ]


def test_not_after_bounds_a_declared_endpoint_by_another(tmp_path):
    rows = [OS_DFS_HEADER,
            ["P1", "60", "I", "12", "1", "30", "1"],
            ["P2", "70", "II", "20", "1", "20", "1"]]  # equal times are fine
    path = write(tmp_path / "clinical.tsv", rows)
    with pytest.raises(sheets.SheetError) as info:
        load_clinical(path, endpoints=OS_DFS)
    assert str(info.value) == (
        "clinical.tsv line 2 (P1): dfs_months 30.0 is after os_time 12.0 (dfs ends no later "
        "than os: endpoints.dfs.not_after in the config)"
    )
    unordered = {**OS_DFS, "dfs": {**OS_DFS["dfs"], "not_after": None}}
    assert load_clinical(path, endpoints=unordered).at["P1", "dfs_months"] == 30.0


def test_a_declared_event_column_without_events_is_an_error(tmp_path):
    path = write(tmp_path / "clinical.tsv", [
        OS_DFS_HEADER,
        ["P1", "60", "I", "12", "1", "10", "0"],
        ["P2", "70", "II", "20", "1", "5", "0"],
    ])
    with pytest.raises(sheets.SheetError) as info:
        load_clinical(path, endpoints=OS_DFS)
    assert str(info.value) == "clinical.tsv: column 'dfs_status' has no events (all censored)"


def test_treatment_column_is_checked_when_declared(tmp_path):
    header = [*CLINICAL_HEADER, "crt"]
    path = write(tmp_path / "clinical.tsv", [header,
                 ["P1", "60", "I", "30", "1", "10", "1", "yes"],
                 ["P2", "70", "II", "20", "0", "5", "0", ""],
                 ["P3", "70", "II", "20", "0", "5", "0", "yes"]])
    clinical = load_clinical(path, ids=("P1", "P2", "P3"))
    problems = sheets.treatment_problems(clinical, "clinical.tsv",
                                         {"column": "crt", "treated": "yes"})
    assert problems == ["clinical.tsv line 3 (P2): treatment 'crt' is blank"]
    assert sheets.treatment_problems(clinical, "clinical.tsv", {"column": "", "treated": ""}) == []
    assert sheets.treatment_problems(clinical, "clinical.tsv", {"column": "chemo"}) == [
        "clinical.tsv: missing treatment column 'chemo' (config treatment.column)"]
    only_treated = sheets.treatment_problems(clinical.assign(crt="yes"), "clinical.tsv",
                                             {"column": "crt", "treated": "yes"})
    assert only_treated == ["clinical.tsv: treatment column 'crt' needs treated ('yes', "
                            "config treatment.treated) and untreated patients; its values: yes"]


def pretrain_config(patients_sheet, tmp_path, pretrain_patients):
    """A run (P1, P2) with deep CT models and a pretraining cohort (G1, G2) whose clinical
    sheet names OS by other columns."""
    write(tmp_path / "clinical.tsv", clinical_rows(["P1", "60", "I", "30", "1", "10", "1"],
                                                   ["P2", "70", "II", "20", "0", "5", "0"]))
    (tmp_path / "pretrain").mkdir()
    write(tmp_path / "pretrain" / "clinical.tsv", [
        ["patient_id", "survival_months", "died", "pfs_time", "pfs_event"],
        ["G1", "12.5", "1", "6", "1"], ["G2", "40", "0", "30", "0"]])
    write(tmp_path / "pretrain" / "patients.tsv",
          [["patient_id", "ct", "mask"], *pretrain_patients])
    return {
        "patients": str(patients_sheet), "clinical": str(tmp_path / "clinical.tsv"),
        "slides": "", "covariates": COVARIATES,
        "harmonization": {"covariates": [], "batch_column": "scanner"},
        "missing_covariates": "error", "endpoints": ENDPOINTS,
        "models": {"deep_ct": {"blocks": ["deep_ct"]}},
        "deep_ct": {"cubes": {"channels": []}, "pretrain": {
            "patients": str(tmp_path / "pretrain" / "patients.tsv"),
            "clinical": str(tmp_path / "pretrain" / "clinical.tsv"),
            "endpoints": {"os": {"time": "survival_months", "event": "died"}}}},
    }


def test_the_pretraining_cohort_is_loaded_with_its_own_endpoint_columns(patients_sheet,
                                                                        tmp_path):
    for pid in ("G1", "G2"):
        (tmp_path / "ct" / f"{pid}.nii.gz").write_bytes(b"x")
        (tmp_path / "ct" / f"{pid}_mask.nii.gz").write_bytes(b"x")
    config = pretrain_config(patients_sheet, tmp_path, [
        ["G1", "../ct/G1.nii.gz", "../ct/G1_mask.nii.gz"],
        ["G2", "../ct/G2.nii.gz", "../ct/G2_mask.nii.gz"]])
    cohort = sheets.load_cohort(config, SCHEMAS)
    assert list(cohort.pretrain_patients.index) == ["G1", "G2"]
    assert cohort.pretrain_patients.at["G1", "ct"] == str(tmp_path / "ct" / "G1.nii.gz")
    assert list(cohort.pretrain_clinical["survival_months"]) == [12.5, 40.0]
    assert list(cohort.pretrain_clinical["pfs_event"]) == [1, 0]
    # Without a model that uses deep_ct, the pretraining sheets are not read.
    config["models"] = {"clinical": {"blocks": []}}
    assert sheets.load_cohort(config, SCHEMAS).pretrain_patients is None


def test_a_pretraining_patient_with_a_run_patients_scan_is_an_error(patients_sheet, tmp_path):
    (tmp_path / "ct" / "G2.nii.gz").write_bytes(b"x")
    config = pretrain_config(patients_sheet, tmp_path, [
        ["G1", "../ct/P1.nii.gz", "../ct/P1_mask.nii.gz"],
        ["G2", "../ct/G2.nii.gz", "../ct/missing_mask.nii.gz"]])
    with pytest.raises(sheets.SheetError) as info:
        sheets.load_cohort(config, SCHEMAS)
    lines = str(info.value).splitlines()
    assert ("deep_ct.pretrain: patients.tsv: pretraining patient G1's ct "
            f"{tmp_path}/ct/P1.nii.gz is also patient P1's in the run's own sheet "
            "(a patient cannot be in both cohorts)") in lines
    assert any(line.startswith("deep_ct.pretrain: patients.tsv line 3 (G2): mask file")
               for line in lines), lines
