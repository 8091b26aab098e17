"""The wheel ships what the package reads at run time: the card templates, which live in `model_cards/templates/`."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_ships_the_card_templates_as_hf_zpd_templates(tmp_path):
    # Built from a copy of the sources: setuptools builds in the tree it is given, and a stale build/ folder in the
    # clone could put files into the wheel that the sources no longer have.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "hf_zpd", source / "hf_zpd", ignore=ignore)
    shutil.copytree(ROOT / "model_cards", source / "model_cards", ignore=ignore)
    wheels = tmp_path / "wheels"
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(wheels)]
    subprocess.run([*command, str(source)], check=True, capture_output=True, timeout=300)

    (wheel,) = wheels.glob("hf_zpd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = {path.name for path in (ROOT / "model_cards" / "templates").glob("*.md")}
    assert templates == {"curriculum_card.md", "grpo_curriculum_card.md", "model_card.md"}
    assert {f"hf_zpd/templates/{name}" for name in templates} <= names
    # The rendered example cards are documentation, not package data.
    assert not any(name.startswith("model_cards/") or name.endswith("README.md") for name in names)

    # The installed wheel finds its templates where `hf_zpd.record` looks for them.
    target = tmp_path / "installed"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); from hf_zpd.cards import TEMPLATES; "
        "print(TEMPLATES); print(TEMPLATES.joinpath('curriculum_card.md').read_text()[:3])"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(target)], check=True, capture_output=True, text=True, cwd=tmp_path
    )
    location, first_line = result.stdout.split()
    assert Path(location) == target / "hf_zpd" / "templates"  # the wheel's copy, not the editable checkout's
    assert first_line == "---"
