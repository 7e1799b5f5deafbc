"""The conda environments for cluster users pin the same versions as requirements.txt."""

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

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


# ---------------------------------------------------------------------------------------
# Every rule's code must import only what its conda environment installs: with
# --software-deployment-method conda each rule runs in its own env, not in .venv.

LIBRARY_ROOT = REPO  # radpath/ and its subpackages
RULE = re.compile(r"^(?:rule|checkpoint) (\w+):\n((?:[ \t]+.*\n|\n)*)", re.M)
CLI_COMMAND = re.compile(r"python -m radpath\.cli (\w[\w-]*)")


def rule_entries() -> list[tuple[str, str, list[str]]]:
    """(rule, env file, entry modules) for every rule with a conda env and code of ours."""
    entries = []
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for name, body in RULE.findall(smk.read_text(encoding="utf-8")):
            env = re.search(r'conda:\s*\n\s*"([^"]+)"', body)
            command = CLI_COMMAND.search(body)
            if env is None or command is None:
                continue
            env_path = str((smk.parent / env.group(1)).resolve())
            entries.append((name, env_path, cli_command_modules(command.group(1))))
    return entries


def cli_command_modules(command: str) -> list[str]:
    """radpath.cli plus what the function behind `command` imports when it runs: a
    per-item command's function in radpath.cli, or a cohort job's function in its stage's
    jobs module (radpath.cli.COHORT_JOBS) with that module's own imports."""
    from radpath.cli import COHORT_JOBS

    tree = ast.parse((LIBRARY_ROOT / "radpath" / "cli.py").read_text(encoding="utf-8"))
    module_level = module_level_imports(tree)
    if command in COHORT_JOBS:
        module = COHORT_JOBS[command]
        jobs = ast.parse((LIBRARY_ROOT / (module.replace(".", "/") + ".py"))
                         .read_text(encoding="utf-8"))
        functions = {node.name: node for node in jobs.body if isinstance(node, ast.FunctionDef)}
        assert command in functions, f"{module} has no function {command}"
        found = module_level | module_level_imports(jobs) | imported_modules(functions[command])
        return [f"module:{m}" for m in found]
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    bound = {
        call.args[0].value: call.args[1].id
        for call in ast.walk(tree)
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "command"
        and len(call.args) >= 2 and isinstance(call.args[0], ast.Constant)
    }
    assert command in bound, f"radpath.cli has no command {command!r}"
    return [f"module:{m}" for m in module_level | imported_modules(functions[bound[command]])]


def module_level_imports(tree: ast.Module) -> set[str]:
    """What a module imports when it is imported (not inside its functions)."""
    return imported_modules(ast.Module(
        body=[node for node in tree.body if not isinstance(node, ast.FunctionDef)],
        type_ignores=[],
    ))


def imported_modules(tree: ast.AST) -> set[str]:
    """Modules imported anywhere in `tree`, lazily or not, except under `if TYPE_CHECKING`."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            node.body = []
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def third_party_closure(entries: list[str]) -> dict[str, str]:
    """Top-level third-party module -> the file that imports it, following radpath's modules
    (all their imports, lazy ones included). Entries are script paths or `module:<name>`."""
    seen, todo, third_party = set(), list(entries), {}
    while todo:
        entry = todo.pop()
        if entry.startswith("module:"):
            module = entry.removeprefix("module:")
            top = module.split(".")[0]
            if top != "radpath":
                if top not in sys.stdlib_module_names and top != "__future__":
                    third_party.setdefault(top, "radpath/cli.py")
                continue
            path = LIBRARY_ROOT / (module.replace(".", "/") + ".py")
            if not path.is_file():
                continue  # `from radpath import x`: x is a module handled by its own name
        else:
            path = Path(entry)
        if path in seen:
            continue
        seen.add(path)
        for module in imported_modules(ast.parse(path.read_text(encoding="utf-8"))):
            top = module.split(".")[0]
            if top == "radpath":
                todo.append(f"module:{module}")
            elif top not in sys.stdlib_module_names and top != "__future__":
                third_party.setdefault(top, str(path.relative_to(REPO)))
    return third_party


def env_distributions(env_file: str) -> set[str]:
    """The env's pinned packages and, from their installed metadata, all they require."""
    wanted = list(env_pins(Path(env_file)))
    allowed = set()
    while wanted:
        name = normalize(wanted.pop())
        if name in allowed:
            continue
        allowed.add(name)
        try:
            requirements = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for requirement in map(Requirement, requirements):
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                wanted.append(requirement.name)
    return allowed


def test_each_rule_imports_only_what_its_env_installs():
    distributions = importlib.metadata.packages_distributions()
    entries = rule_entries()
    assert {rule for rule, _, _ in entries} >= {"ct_patient", "slide_tiles", "slide_embedding", "fit_model",
                                                 "pathomics_matrices", "report"}
    problems = []
    for rule, env_file, modules in entries:
        allowed = env_distributions(env_file)
        for module, importer in sorted(third_party_closure(modules).items()):
            owners = {normalize(d) for d in distributions.get(module, [])}
            if not owners & allowed:
                problems.append(f"rule {rule} ({Path(env_file).name}): {importer} imports "
                                f"{module} ({', '.join(sorted(owners)) or 'not installed'})")
    assert not problems, "\n".join(problems)
