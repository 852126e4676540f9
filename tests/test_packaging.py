"""`pip install .` ships every subpackage: a folder of flowkern/ with an __init__.py that setup.py does not list is
missing from a non-editable install (the tests of an editable one would not notice). And a build without nvcc
compiles: this machine's build may have had CUDA, which hides code that only the CUDA build declares. And the project
metadata raises no setuptools deprecation (a deprecation is a dated failure of a fresh machine's build)."""
import ast
import os
import shutil
import subprocess
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_setup_lists_every_subpackage():
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    listed = next(ast.literal_eval(kw.value) for node in ast.walk(tree) if isinstance(node, ast.Call)
                  for kw in node.keywords if kw.arg == "packages")
    found = {os.path.relpath(d, ROOT).replace(os.sep, ".") for d, _, files in os.walk(os.path.join(ROOT, "flowkern"))
             if "__init__.py" in files}
    assert found <= set(listed), f"setup.py packages misses {sorted(found - set(listed))}"


def test_bindings_compile_without_cuda():
    """csrc/bindings.cpp as setup.py compiles it where nvcc is missing (no FLOWKERN_WITH_CUDA), syntax only."""
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler here")
    pybind11 = pytest.importorskip("pybind11")
    cmd = [cxx, "-std=c++17", "-fsyntax-only", "-fvisibility=hidden", '-DFLOWKERN_CUDA_ARCHS=""',
           "-I" + os.path.join(ROOT, "csrc"), "-I" + pybind11.get_include(), "-I" + sysconfig.get_paths()["include"],
           os.path.join(ROOT, "csrc", "bindings.cpp")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


def test_project_metadata_raises_no_setuptools_deprecation():
    """setuptools refuses the deprecated `license = {text = ...}` table from 2027-02-18: a build that only warns today
    would break CI on a fresh machine then. The metadata as setuptools applies it, with warnings as errors."""
    import warnings

    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution
    cwd = os.getcwd()
    os.chdir(ROOT)  # the readme is a path relative to pyproject.toml
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            dist = apply_configuration(Distribution(), os.path.join(ROOT, "pyproject.toml"))
    finally:
        os.chdir(cwd)
    assert dist.metadata.license_expression == "MIT"
