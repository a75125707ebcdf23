"""The package ships one manifest, valid, and the README's commands stay true."""

from __future__ import annotations

import importlib.resources
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_manifest_copies_cannot_drift():
    root_text = (ROOT / "napari.yaml").read_text()
    packaged = importlib.resources.files("napari_boundary_seg") / "napari.yaml"
    assert packaged.read_text() == root_text


def test_manifest_validates_through_entry_point():
    npe2 = pytest.importorskip("npe2")
    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-boundary-seg")
    assert manifest.name == "napari-boundary-seg"
    # every python_name in the manifest resolves to a real object
    for command in manifest.contributions.commands or []:
        module, _, attr = command.python_name.partition(":")
        mod = __import__(module, fromlist=[attr])
        assert callable(getattr(mod, attr)), command.python_name


def test_npe2_validate_cli_passes():
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-boundary-seg"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def _readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [b.strip() for b in re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_test_command():
    test_command = _readme_blocks()[1]  # the second code block: one line
    assert "\n" not in test_command and "pytest" in test_command
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()


def test_the_first_block_is_the_main_job():
    assert _readme_blocks()[0].endswith("napari-boundary-seg demo")


def test_one_version_string():
    import configparser

    import napari_boundary_seg

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["metadata"]["version"] == "attr: napari_boundary_seg.__version__"
    assert napari_boundary_seg.__version__ == "0.4.0"


def test_data_and_runs_are_not_tracked():
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "/data/" in ignored and "/runs/" in ignored


def test_sample_menu_ids_are_not_command_ids():
    """napari registers the menu item of sample ``key`` as command
    ``<plugin>.<key>`` next to the manifest's commands: another command of that
    id is a "Command already registered" error when napari starts, so no
    command is named so."""
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_file(ROOT / "napari.yaml")
    commands = {command.id for command in manifest.contributions.commands}
    samples = manifest.contributions.sample_data
    assert {s.key for s in samples} == {"lesion_case", "starter_model"}
    for sample in samples:
        assert sample.command in commands
        assert f"{manifest.name}.{sample.key}" not in commands, sample.key
