"""bnref as a package: `python -m build` makes a wheel and an sdist that install without the book.

The wheel is installed into a fresh virtual environment. That environment has no network here, so it borrows the
already installed third-party packages (NumPy, and the frameworks the command lines may import) through a path file
pointing at this interpreter's site-packages; bnref itself must come from the wheel, which the test checks.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

import bnref

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: build with the setuptools installed here (no download); the result is the same wheel.
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--wheel", "--sdist", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
    )
    return out


def test_one_version():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" in meta.get("dynamic", []), "the version is read from bnref.__version__, not written twice"
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {bnref.__version__}" in changelog, "CHANGELOG.md has no entry for bnref.__version__"


def test_wheel_holds_the_package_and_not_the_book(dist):
    (wheel,) = dist.glob("bnref-*.whl")
    assert wheel.name.startswith(f"bnref-{bnref.__version__}-")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("bnref/__init__.py", "bnref/reference.py", "bnref/layers/torch_bn.py", "bnref/check/__init__.py"):
        assert module in names
    assert not [n for n in names if n.startswith(("book/", "tests/", "benchmarks/"))]
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "License-Expression: MIT" in text
    for extra in ("torch", "keras", "jax"):
        assert f"Provides-Extra: {extra}" in text
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_sdist_builds(dist):
    (sdist,) = dist.glob("bnref-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    assert any(n.endswith("/bnref/reference.py") for n in names)
    assert any(n.endswith("/LICENSE") for n in names)


def test_wheel_installs_in_a_fresh_environment(dist, tmp_path):
    (wheel,) = dist.glob("bnref-*.whl")
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env)
    python = env / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # NumPy and the frameworks from this interpreter (no network); listed after the environment's own packages.
    (site / "zz_borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    code = "import bnref, sys; print(bnref.__version__); print(bnref.__file__); print('torch' in sys.modules)"
    out = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path).stdout
    version, path, torch_loaded = out.split()
    assert version == bnref.__version__
    assert Path(path).is_relative_to(env), f"bnref came from {path}, not from the wheel"
    assert torch_loaded == "False"
    for script in ("bnref-train", "bnref-conformance", "bnref-experiments"):
        done = subprocess.run([env / "bin" / script, "--help"], capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0, f"{script} --help: {done.stderr[-500:]}"
        assert "usage" in done.stdout.lower()
