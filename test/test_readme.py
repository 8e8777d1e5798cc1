"""The README's set-up commands and CI stay in step."""

import re

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _shell_blocks():
    text = (REPO / "README.md").read_text()
    setup = text.split("## Set-up: two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", setup, flags=re.S)


def test_readme_has_exactly_two_setup_commands():
    blocks = _shell_blocks()
    assert len(blocks) == 2
    assert all(len(b.strip().splitlines()) == 1 for b in blocks)


def test_ci_runs_the_readme_test_command_verbatim():
    test_cmd = _shell_blocks()[1].strip()
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_cmd in [line.strip() for line in ci]


def test_setup_scripts_exist():
    for block in _shell_blocks():
        script = block.split()[1]
        assert (REPO / script).is_file(), script


def test_test_command_runs_in_parallel_and_passes_pytest_options_through():
    """run_tests.sh spreads the suite over the cores and hands its arguments to pytest, after
    its own options (so `-n 0` or `-k name` given by the user win)."""
    script = (REPO / "test" / "run_tests.sh").read_text()
    (pytest_line,) = [line for line in script.splitlines() if "-m pytest" in line]
    assert "-n " in pytest_line and pytest_line.rstrip().endswith('"$@"')
    assert "pytest-xdist" in (REPO / "setup.cfg").read_text()
