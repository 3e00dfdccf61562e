"""Scripts call the library, never the reverse: only dd/cli.py and dd/commands/ import the command line, and the
runnable entry (`python -m dd.cli`, what torchrun launches) is that module itself, named so in lock messages."""
import ast
import sys
from pathlib import Path

import dd
from dd.lock import command_line

PACKAGE = Path(dd.__file__).resolve().parent


def _imported(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` in the file names (relative imports resolved in the package)."""
    tree = ast.parse(path.read_text(), str(path))
    here = ["dd", *path.relative_to(PACKAGE).parent.parts]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(here[: len(here) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names |= {module} | {f"{module}.{a.name}" for a in node.names}
    return names


def test_no_library_module_imports_the_command_line():
    scripts = {PACKAGE / "cli.py", *(PACKAGE / "commands").rglob("*.py")}
    def imports_scripts(p: Path) -> bool:
        return any(n == m or n.startswith(m + ".") for n in _imported(p) for m in ("dd.cli", "dd.commands"))

    offenders = sorted(str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
                       if p not in scripts and imports_scripts(p))
    assert not offenders, f"library modules importing the script layer: {offenders}"
    assert not (PACKAGE / "__main__.py").exists()  # it would import dd.cli; `python -m dd.cli` is the entry


def test_the_lock_names_the_command_as_a_person_would_type_it(monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(PACKAGE / "cli.py"), "distill", "--out", "a b"])  # python -m dd.cli
    assert command_line() == "python -m dd.cli distill --out 'a b'"
    monkeypatch.setattr(sys, "argv", [str(PACKAGE / "commands" / "__main__.py"), "x"])  # a package run with -m
    assert command_line() == "python -m dd.commands x"
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/ddtk", "eval"])
    assert command_line() == "ddtk eval"
    monkeypatch.setattr(sys, "argv", ["/elsewhere/cli.py", "eval"])  # a script of the same name outside dd/
    assert command_line() == "cli.py eval"
