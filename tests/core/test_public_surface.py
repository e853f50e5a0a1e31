"""The declared surface of ``core``: what apps may import, and that they import nothing else.

The rule (docs/architecture.md): an app imports from core only

* ``from core import X`` with ``X`` in ``core.__all__`` (``import core`` then ``core.X``
  likewise), and
* the ``core.cli`` package's helpers (``core.cli.output``), for apps that register
  ``mesh`` subcommands (entry point ``meshsuite.commands``).

Imports under ``if TYPE_CHECKING:`` count too (a type is part of the surface or it is
private). Apps never import each other.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import core

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "apps"
ALLOWED_MODULE_PREFIXES = ("core.cli",)


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    module: str
    names: tuple[str, ...]

    def __str__(self) -> str:
        names = ", ".join(self.names)
        where = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{where}:{self.line}: from {self.module} import {names}"


def imports_of(path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = tuple(a.name for a in node.names)
            found.append(Import(path, node.lineno, node.module, names))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(path, node.lineno, alias.name, ()))
    return found


def surface_violations(path: Path, app: str) -> list[str]:
    bad = []
    exported = set(core.__all__)
    for imp in imports_of(path):
        top = imp.module.split(".")[0]
        if top == "apps":
            other = imp.module.split(".")[1] if "." in imp.module else ""
            if other != app:
                bad.append(f"{imp} (apps do not import each other)")
        if top != "core":
            continue
        if imp.module == "core":
            outside = [n for n in imp.names if n not in exported]
            if outside:
                bad.append(f"{imp} ({', '.join(outside)} not in core.__all__)")
        elif not imp.module.startswith(ALLOWED_MODULE_PREFIXES):
            bad.append(f"{imp} (not the core surface: use `from core import ...`)")
    return bad


def app_files() -> list[tuple[str, Path]]:
    return [(p.relative_to(APPS).parts[0], p) for p in sorted(APPS.rglob("*.py"))]


def test_apps_import_only_the_declared_core_surface() -> None:
    files = app_files()
    assert len(files) > 20  # the walk found the apps
    bad = [v for app, path in files for v in surface_violations(path, app)]
    assert not bad, "imports outside the core surface:\n" + "\n".join(bad)


def test_the_checker_catches_private_imports(tmp_path: Path) -> None:
    src = tmp_path / "mod.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "from core import Node, secret_thing\n"
        "from core.backend import NodeEvent\n"
        "from core.cli.output import emit\n"
        "from apps.mail import store\n"
        "from apps.chat import wire\n"
        "if TYPE_CHECKING:\n"
        "    from core.node import Node\n"
    )
    bad = surface_violations(src, "chat")
    assert len(bad) == 4, bad
    assert any("secret_thing" in b for b in bad)
    assert any("core.backend" in b for b in bad)
    assert any("core.node" in b for b in bad)
    assert any("apps.mail" in b for b in bad)


@pytest.mark.parametrize("name", sorted(core.__all__))
def test_every_exported_name_resolves_to_its_module_object(name: str) -> None:
    value = getattr(core, name)
    module = importlib.import_module(core._EXPORTS[name])
    assert value is getattr(module, name)


def test_all_and_the_lazy_table_agree_and_have_no_duplicates() -> None:
    assert len(core.__all__) == len(set(core.__all__))
    assert set(core.__all__) == set(core._EXPORTS)
    assert set(core.__all__) <= set(dir(core))
    with pytest.raises(AttributeError, match="no attribute"):
        core.NotAThing  # noqa: B018


def test_the_type_checking_imports_declare_the_same_names() -> None:
    tree = ast.parse((ROOT / "core" / "__init__.py").read_text())
    declared: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("core."):
            for alias in node.names:
                declared[alias.asname or alias.name] = node.module
    assert declared == core._EXPORTS


def test_importing_core_is_cheap_and_loads_nothing_of_the_node() -> None:
    code = (
        "import sys, core; from core import MeshError; "
        "mods = ('core', 'aiosqlite', 'cryptography'); "
        "print(sorted(m for m in sys.modules if m.startswith(mods)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "['core', 'core.errors']"


def test_core_imports_no_app() -> None:
    bad = [
        str(imp)
        for path in sorted((ROOT / "core").rglob("*.py"))
        for imp in imports_of(path)
        if imp.module.split(".")[0] == "apps"
    ]
    assert not bad, bad
