"""The notebooks' stored outputs are compared with one stated tolerance (tests/nbval_tolerance)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .nbval_tolerance import last_digit_unit, numbers_agree

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("stored", "fresh"),
    [
        ("image BCE 0.707", "image BCE 0.706"),
        ("-0.000 and 0.001", "0.000 and 0.000"),
        ("gap 5e-06", "gap 6e-06"),
        ("<td>0.123</td><td>12</td>", "<td>0.124</td><td>12</td>"),
        ("loss 3.25", "loss 3.25"),
    ],
)
def test_a_decimal_may_move_by_one_unit_in_its_last_digit(stored, fresh):
    assert numbers_agree(stored, fresh)


@pytest.mark.parametrize(
    ("stored", "fresh", "why"),
    [
        ("image BCE 0.707", "image BCE 0.709", "two units"),
        ("240 images", "241 images", "integers are exact"),
        ("0.707", "0.7070", "another printed precision"),
        ("gap 5e-06", "gap 5e-01", "another exponent"),
        ("loss 0.5 of 3", "cost 0.5 of 3", "other words"),
        ("0.5, 0.6", "0.5", "a number missing"),
        ("step 60  3.078", "step 60  3.457", "a trained loss on another machine"),
    ],
)
def test_anything_else_must_match_exactly(stored, fresh, why):
    assert not numbers_agree(stored, fresh), why


def test_last_digit_unit_reads_the_printed_precision():
    assert last_digit_unit("0.707") == last_digit_unit("1.000") == last_digit_unit("0.001")
    assert float(last_digit_unit("12.5")) == 0.1
    assert float(last_digit_unit("5e-06")) == 1e-06
    assert float(last_digit_unit("1.5e-06")) == 1e-07


def _notebook(code: str, stored_text: str) -> dict:
    cell = {
        "cell_type": "code",
        "execution_count": 1,
        "metadata": {},
        "source": code,
        "outputs": [{"output_type": "stream", "name": "stdout", "text": stored_text}],
    }
    return {
        "cells": [cell],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


@pytest.mark.slow
def test_nbval_applies_the_tolerance_and_nothing_more(tmp_path):
    """A real nbval run with the tolerance installed: a last-digit change passes, a larger one
    fails."""
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(ROOT)!r})
            from tests.nbval_tolerance import install

            def pytest_configure(config):
                install()
            """
        )
    )
    code = 'print("image BCE", round(0.7064, 3))'
    (tmp_path / "close.ipynb").write_text(json.dumps(_notebook(code, "image BCE 0.707\n")))
    (tmp_path / "far.ipynb").write_text(json.dumps(_notebook(code, "image BCE 0.709\n")))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval",
            "--nbval-current-env",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rA",
            "close.ipynb",
            "far.ipynb",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "PASSED close.ipynb::Cell 0" in run.stdout, run.stdout[-3000:]
    assert "FAILED far.ipynb::Cell 0" in run.stdout, run.stdout[-3000:]
