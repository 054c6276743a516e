"""The system programs some tests need, and the skip that names the package and the command when one is missing.

`make test` installs the packages of the missing programs (``python -m tests.system`` lists them) when
the user may (root, or sudo without a password); anyone else gets these skips and everything else runs.
"""

from __future__ import annotations

import shutil

import pytest

#: Program -> the Debian package that has it.
SYSTEM_PROGRAMS = {"chromium": "chromium", "redis-server": "redis-server", "redis-cli": "redis-server"}


def missing_packages(*programs: str) -> list[str]:
    """The Debian packages of those ``programs`` (default: all of them) that are not on PATH."""
    gone = [p for p in programs or SYSTEM_PROGRAMS if shutil.which(p) is None]
    return list(dict.fromkeys(SYSTEM_PROGRAMS[p] for p in gone))


def missing(*programs: str) -> str | None:
    """Why a test needing ``programs`` must skip, or None when all are on PATH."""
    gone = [p for p in programs if shutil.which(p) is None]
    if not gone:
        return None
    packages = " ".join(missing_packages(*gone))
    return (f"needs {', '.join(gone)} (Debian package {packages}): install it with "
            f"`sudo apt-get install -y {packages}`, or run `make test` as root or with passwordless sudo")


def needs(*programs: str) -> pytest.MarkDecorator:
    reason = missing(*programs)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


if __name__ == "__main__":  # for `make test`: the packages to install
    print(" ".join(missing_packages()))
