"""Where the tests' image data lives, and what happens when it is not there.

* Committed fixtures, always present (made by tests/data/make_fixtures.py, which says
  exactly how): ``CIFAR10_MINI_ZIP`` (30 + 30 JPEGs per CIFAR-10 class) and
  ``ATT_FACES_MINI_ZIP`` (AT&T faces, 10 subjects x 10 images). Tests that need "real
  images of this format" use these.
* ``SHARED_DATA`` (``../shared/data`` beside the checkout, or ARCHSEARCH_SHARED_DATA):
  the full cifar10-jpeg.zip and att-faces.zip, for the tests that measure accuracy on them;
  ``FASHION_MNIST_DIR``: the Debian package dataset-fashion-mnist.

The latter two are reached through the ``shared_data`` / ``fashion_mnist_dir`` fixtures
(tests/conftest.py), which call :func:`require`: absent data skips the test with the
reason, or fails it when ARCHSEARCH_REQUIRE_DATA=1 (CI, ``.ci/run``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT / "tests" / "data"
CIFAR10_MINI_ZIP = FIXTURES / "cifar10-mini.zip"
ATT_FACES_MINI_ZIP = FIXTURES / "att-faces-mini.zip"

SHARED_DATA = Path(os.environ.get("ARCHSEARCH_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
REQUIRE_DATA = os.environ.get("ARCHSEARCH_REQUIRE_DATA", "") not in ("", "0", "false")

skipped: set[str] = set()  # paths a test was skipped for (for the terminal summary)


def require(path: Path, hint: str) -> Path:
    """``path`` when it exists; else skip the calling test with the reason, or fail it
    under ARCHSEARCH_REQUIRE_DATA=1. ``hint`` says how one gets the data."""
    __tracebackhide__ = True  # report the test (or fixture) that asked, not this line
    if path.exists():
        return path
    reason = f"{path} is absent ({hint})"
    if REQUIRE_DATA:
        pytest.fail(f"ARCHSEARCH_REQUIRE_DATA=1 but {reason}", pytrace=False)
    skipped.add(str(path))
    pytest.skip(f"data test skipped: {reason}")
