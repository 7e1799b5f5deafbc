"""CT radiomics: pyradiomics features of a patient's lesion (features), and ComBat
harmonization of a cohort's feature matrix across scanners, fitted on training patients
(harmonize; used for every feature block).

Imports: radpath.inputs.
"""
