"""The supported versions: the floors stated in pyproject.toml, requirements.txt and constraints-floors.txt agree, and
the Trainer methods we override are called the way the installed transformers calls them."""

import inspect
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version
from transformers import Trainer

from synermix_hf import SynerMixTrainer

ROOT = Path(__file__).resolve().parents[1]


def _requirement_lines(path: Path) -> list[str]:
    lines = (re.sub(r"\s+#.*", "", line).strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith(("#", "-"))]


def _floors(requirements: list[str], where: str) -> dict[str, Version]:
    floors = {}
    for text in requirements:
        requirement = Requirement(text)
        specifiers = list(requirement.specifier)
        assert [s.operator for s in specifiers] == [">="], f"{where}: {text!r} should state only its floor, as '>=X'"
        floors[requirement.name.lower().replace("_", "-")] = Version(specifiers[0].version)
    return floors


def _pins(path: Path) -> dict[str, Version]:
    pins = {}
    for text in _requirement_lines(path):
        requirement = Requirement(text)
        specifiers = list(requirement.specifier)
        assert [s.operator for s in specifiers] == ["=="], f"{path.name}: {text!r} should pin one version, as '==X'"
        pins[requirement.name.lower().replace("_", "-")] = Version(specifiers[0].version)
    return pins


def test_the_floors_agree_in_pyproject_requirements_and_the_constraints_file():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    package = _floors(project["dependencies"], "pyproject.toml")
    requirements = _floors(_requirement_lines(ROOT / "requirements.txt"), "requirements.txt")
    pins = _pins(ROOT / "constraints-floors.txt")

    test_only = {name: floor for name, floor in requirements.items() if name not in package}
    assert set(test_only) == {"pytest", "timm", "optuna"}, "requirements.txt should list the package's dependencies plus the tests' own"
    assert requirements == {**package, **test_only}
    assert pins == requirements, "constraints-floors.txt should pin every requirement at its floor"


def _accepts(override: inspect.Signature, name: str) -> bool:
    kinds = {p.kind for p in override.parameters.values()}
    return name in override.parameters or inspect.Parameter.VAR_KEYWORD in kinds


def test_overridden_trainer_methods_take_the_arguments_the_installed_trainer_passes():
    # An override whose parameters differ from the installed Trainer's breaks training outright (a TypeError), on the
    # releases where transformers changed the signature.
    checked = 0
    for cls in [klass for klass in SynerMixTrainer.__mro__ if klass.__module__.startswith("synermix_hf")]:
        for name, override in vars(cls).items():
            base = getattr(Trainer, name, None)
            if name.startswith("__") or not callable(override) or not callable(base):
                continue
            ours, theirs = inspect.signature(override), inspect.signature(base)
            for parameter in list(theirs.parameters.values())[1:]:
                if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                    continue
                assert _accepts(ours, parameter.name), f"{cls.__name__}.{name} lacks `{parameter.name}`{theirs}"
            for parameter in list(ours.parameters.values())[1:]:
                required = parameter.default is parameter.empty and parameter.kind not in (
                    parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD
                )
                assert not required or parameter.name in theirs.parameters, (
                    f"{cls.__name__}.{name} requires `{parameter.name}`, which Trainer.{name}{theirs} does not pass"
                )
            checked += 1
    assert checked >= 8
