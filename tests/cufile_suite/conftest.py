"""Tests in this folder call the real libcufile: they run only where PYGDS_TEST_CUFILE=1.

tests/test_cufile_on_standin.py runs them in a subprocess under the CUDA driver stand-in (which sets
it); on a GPU machine, run them directly with PYGDS_TEST_CUFILE=1.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SKIP_REASON = ("cuFile tests run under the stand-in driver via tests/test_cufile_on_standin.py, "
               "or on a GPU machine with PYGDS_TEST_CUFILE=1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("PYGDS_TEST_CUFILE") == "1":
        return
    for item in items:  # this hook sees the whole session's items: mark only this folder's
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))
