# SPDX-License-Identifier: Apache-2.0
"""The package installs, exposes its version, and runs on the pinned stack."""

import re
from importlib.metadata import version
from pathlib import Path

import pytest

import anomalib_mambaadv2

ROOT = Path(__file__).resolve().parents[1]


def pinned() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_version_is_exposed_and_matches_metadata():
    assert re.fullmatch(r"\d+\.\d+\.\d+", anomalib_mambaadv2.__version__)
    assert version("anomalib-mambaadv2") == anomalib_mambaadv2.__version__


@pytest.mark.parametrize(
    "package", ["torch", "torchvision", "anomalib", "timm", "lightning", "openvino", "onnxruntime"]
)
def test_installed_stack_is_the_pinned_one(package):
    pins = pinned()
    assert package in pins, f"{package} is not pinned in constraints.txt"
    installed = version(package).split("+")[0]
    assert installed == pins[package], f"{package} {installed} installed, constraints.txt pins {pins[package]}"


def test_components_do_not_import_anomalib_or_lightning():
    for path in (ROOT / "anomalib_mambaadv2" / "components").glob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import)\s+(anomalib|lightning)", text, re.M), path.name
