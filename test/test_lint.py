"""The code stays clean under the project's ruff rules (pyproject.toml: pyflakes, pycodestyle,
bugbear, blind except)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "lib", "test", "bin"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_help_pages_keep_their_prose_within_the_terminal():
    """ahelp-style pages are read in an 80-column terminal: no prose line runs on.

    A few command examples are allowed to pass 80 a little (a shell line is not broken);
    anything past 96 characters is a line whose break was lost in an edit.
    """
    from pathlib import Path

    long = [f"{p.name}:{i}: {len(line)} characters"
            for p in sorted((Path(__file__).resolve().parents[1] / "share" / "doc").glob("*.txt"))
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1)
            if len(line) > 96]
    assert not long, long
