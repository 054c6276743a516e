"""`make run` on a fresh clone without data: one screen of what it can ingest and how, exit 2, no traceback,
and nothing installed first (scripts/run-main-job and the Makefile, run for real in a copy of the checkout
placed where no ../shared exists)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LISTING = "https://bulkdata.uspto.gov/data/patent/grant/redbook/fulltext/2025/"


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """The files `make run` touches before installing, in a folder with no ../shared beside it."""
    root = tmp_path / "elsewhere" / "patentml"
    (root / "scripts").mkdir(parents=True)
    for name in ("Makefile", "scripts/run-main-job", "scripts/airflow-env.sh"):
        shutil.copy2(REPO / name, root / name)
    assert not (root.parent.parent / "shared").exists()
    return root


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)})


def test_make_run_without_data_says_what_it_can_ingest(clone: Path) -> None:
    proc = _run(["make", "run"], clone)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in text
    assert "no DATA given, and no ../shared/data beside this checkout" in text
    help_lines = proc.stderr.splitlines()
    assert len(help_lines) <= 24, "the guidance must fit one screen"
    make_lines = [line.strip() for line in help_lines if line.strip().startswith("make run DATA=")]
    assert f"make run DATA={LISTING}" in make_lines
    assert any("g_patent_abstract.tsv.zip" in line and "g_cpc_current.tsv.zip" in line for line in make_lines)
    assert any(line.endswith("_USPTO.json") for line in make_lines) and any(line.startswith("make run DATA=/path/to/patents.jsonl") for line in make_lines)
    assert all(re.search(r"\d+(-\d+)? (MB|GB)", line) for line in help_lines if line.strip().startswith(("USPTO", "PatentsView")))
    assert "MAIN_JOB_LATEST" in text
    assert not (clone / ".venv").exists(), "nothing may be installed before the data check"


@pytest.mark.parametrize("data", ["/nowhere/patents.jsonl", "/nowhere/a.jsonl,/nowhere/b.jsonl"])
def test_data_that_is_not_there_is_named(clone: Path, data: str) -> None:
    proc = _run(["make", "run", f"DATA={data}"], clone)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"error: no data at {data.split(',')[0]}" in proc.stderr and f"make run DATA={LISTING}" in proc.stderr


def test_the_check_passes_for_data_that_is_there(clone: Path, tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("{}\n")
    for data in (str(tmp_path / "a.jsonl"), f"{tmp_path / 'a.jsonl'}, {LISTING}", str(tmp_path / "*.jsonl")):
        proc = _run(["bash", "scripts/run-main-job", "--check-data", data], clone)
        assert (proc.returncode, proc.stderr) == (0, ""), data
    proc = _run(["bash", "scripts/run-main-job", "--check-data"], clone)
    assert proc.returncode == 2


def test_a_missing_system_program_skips_naming_the_package_and_the_command(monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path) -> None:
    from tests import system

    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    assert system.missing_packages() == ["chromium", "redis-server"]
    reason = system.missing("redis-server", "redis-cli")
    assert reason is not None and "Debian package redis-server" in reason
    assert "`sudo apt-get install -y redis-server`" in reason and "make test" in reason
    program = tmp_path / "redis-server"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    assert system.missing("redis-server") is None and system.missing_packages() == ["chromium", "redis-server"]
    assert system.missing_packages("redis-server") == []
