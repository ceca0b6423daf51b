"""The examples in docs/ run and print what the docs say (doctest)."""

from __future__ import annotations

import doctest
import pathlib

import pytest

DOCS = sorted((pathlib.Path(__file__).resolve().parents[1] / "docs").glob("*.md"))


@pytest.mark.parametrize("path", [p for p in DOCS if ">>>" in p.read_text()], ids=lambda p: p.name)
def test_doc_examples_run(path):
    result = doctest.testfile(str(path), module_relative=False, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
