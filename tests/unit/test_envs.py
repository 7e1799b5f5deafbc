"""The conda environments for cluster users pin the same versions as requirements.txt."""

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lines) -> dict[str, str]:
    found = {}
    for line in lines:
        match = PIN.match(line.strip())
        if match:
            found[normalize(match.group(1))] = match.group(2)
    return found


REQUIREMENTS = pins((REPO / "requirements.txt").read_text(encoding="utf-8").splitlines())
ALL_PINS = {
    **pins((REPO / "constraints.txt").read_text(encoding="utf-8").splitlines()),
    **pins((REPO / "requirements-build.txt").read_text(encoding="utf-8").splitlines()),
    **REQUIREMENTS,
}
ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))


def env_pins(path: Path) -> dict[str, str]:
    env = yaml.safe_load(path.read_text(encoding="utf-8"))
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    return pins(line for block in pip_lists for line in block)


def test_there_are_env_files_for_each_rule_family():
    assert {p.stem for p in ENV_FILES} >= {"radiomics", "stats", "pathology"}


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_match_requirements(path):
    pinned = env_pins(path)
    assert pinned, f"{path.name} pins nothing"
    mismatched = {
        name: (version, ALL_PINS.get(name))
        for name, version in pinned.items()
        if ALL_PINS.get(name) != version
    }
    assert not mismatched, f"{path.name} differs from requirements/constraints: {mismatched}"


def test_every_rule_names_an_existing_env():
    for smk in (REPO / "rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*\n?\s*"([^"]+)"', smk.read_text(encoding="utf-8")):
            assert (smk.parent / env).resolve().is_file(), f"{smk.name}: {env} missing"
