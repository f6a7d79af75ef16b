"""The package as pip builds it: the distribution is `wyvern-hpc` (the name
`wyvern` on PyPI belongs to another project), it installs the import package
`wyvern` and nothing else, and its version is Cargo's."""

import re
import shutil
import subprocess
import sys
import zipfile

import wyvern
from agents import ROOT

DIST = "wyvern-hpc"


def cargo_version():
    text = (ROOT / "Cargo.toml").read_text()
    return re.search(r'^version = "([^"]+)"', text, re.M).group(1)


def test_the_wheel_is_named_wyvern_hpc_and_holds_the_wyvern_package(tmp_path):
    # Built from a copy, offline (the venv's setuptools and wheel): building in
    # place would leave build/ and *.egg-info in the tree.
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "python" / "pyproject.toml", src)
    shutil.copytree(ROOT / "python" / "wyvern", src / "wyvern",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    out = tmp_path / "dist"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
         "--no-build-isolation", "--no-deps", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    version = cargo_version()
    wheels = sorted(p.name for p in out.glob("*.whl"))
    assert wheels == ["wyvern_hpc-%s-py3-none-any.whl" % version], wheels
    with zipfile.ZipFile(out / wheels[0]) as z:
        names = z.namelist()
        meta = z.read("wyvern_hpc-%s.dist-info/METADATA" % version).decode()
    assert re.search(r"^Name: wyvern-hpc$", meta, re.M), meta
    assert re.search(r"^Version: %s$" % re.escape(version), meta, re.M), meta
    # `import wyvern`: the one top-level package.
    top = {n.split("/")[0] for n in names if not n.startswith("wyvern_hpc-")}
    assert top == {"wyvern"}, sorted(names)
    assert "wyvern/__init__.py" in names and "wyvern/_ffi.py" in names, names


def test_the_versions_agree():
    assert wyvern.__version__ == cargo_version()
    text = (ROOT / "python" / "pyproject.toml").read_text()
    assert re.search(r'^name = "%s"$' % DIST, text, re.M)
    assert re.search(r'^version = "%s"$' % re.escape(cargo_version()), text, re.M)


def test_the_loaded_library_is_this_version():
    # wyvern_version_string / wyvern_api_version of the C library the package loaded.
    assert wyvern.library_version() == cargo_version()
    major, minor, patch = (int(x) for x in cargo_version().split("."))
    from wyvern import _ffi
    assert _ffi.lib.wyvern_api_version() == major * 10000 + minor * 100 + patch
