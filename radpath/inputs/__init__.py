"""Reading and checking what the user gives: the configuration (defaults from the schema,
every problem named by its key), the patients, clinical and slides sheets, CT images and
DICOM series, masks; the cohort tables every later stage starts from (the frozen
train/validation split, outcomes, covariate imputation); file writing (atomic) and the
per-item job logic (a bad input excludes its patient or slide, anything else fails the job).

Imports: no other radpath subpackage. Everything else imports this.
"""
