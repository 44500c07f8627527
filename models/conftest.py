"""Shared fixtures of the model tooling's tests."""

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def random_build(tmp_path_factory):
    """The `--weights random` path end to end: the same code the ImageNet path runs, minus the download."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    out = tmp_path_factory.mktemp("models")
    subprocess.run(
        [sys.executable, str(HERE / "build_models.py"), "build", "--weights", "random", "--prefix", "random",
         "--calibration", "8", "--out", str(out)],
        check=True,
    )
    return out
