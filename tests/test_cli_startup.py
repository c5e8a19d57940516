"""CLI start-up: ``python -m core --help`` works and loads nothing heavy; choosing threads does no work at import.

Times are measured by ``bench/cli_startup.py``, never here; these tests check what makes start-up fast.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_help_lists_every_subcommand(capsys):
    from core.cli import SUBCOMMANDS, main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SUBCOMMANDS)


def _imported_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


def test_importing_core_loads_no_heavy_library():
    heavy = {"torch", "sklearn", "pandas", "librosa", "scipy"}
    assert not heavy & _imported_after("import core, core.errors, core.io.device")


def test_cli_parser_loads_no_torch():
    assert "torch" not in _imported_after("import core.cli; core.cli.build_parser()")
