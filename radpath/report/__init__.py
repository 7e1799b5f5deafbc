"""The HTML report: every table and figure of a run in one self-contained page (html).

Imports: radpath.inputs and radpath.survival.
"""
