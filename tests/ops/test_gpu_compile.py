"""Compile-only GPU checks, no GPU needed: every Triton launch config the dispatch can pick and every CUDA
kernel, compiled for sm_80 and sm_90, must not spill registers, must not run a float32 dot in plain TF32, must fit
the arch's shared memory and must keep at least one block resident per SM. Skips (with the reason) only when a
compiler is missing. The first run compiles everything (minutes on 2 cores); Triton's cache makes reruns fast."""
import functools
import importlib

import pytest

from flowkern.ops import gpu_compile as gc

ARCHS = (80, 90)


def _missing(check):
    try:
        check()
    except gc.CompilerMissing as e:
        return str(e)
    return None


def _triton_tools():
    gc._triton_bin("ptxas")
    gc._triton_bin("cuobjdump")


TRITON_MISSING = _missing(_triton_tools)
NVCC_MISSING = _missing(lambda: (gc._find_nvcc(), gc.source_root()))


def _triton_configs():
    if TRITON_MISSING:
        return []
    return [(module, config.fn.__name__, config.label) for module in gc.TRITON_MODULES
            for config in importlib.import_module(f"flowkern.ops.triton.{module}").launch_configs()]


@functools.lru_cache(maxsize=None)
def _triton_rows(arch):
    return {(r["kernel"], r["config"]): r for r in gc.triton_resources(arch)}


@functools.lru_cache(maxsize=None)
def _cuda_rows(arch):
    return gc.cuda_resources(arch)


def _check(row):
    lim = gc.ARCH_LIMITS[row["arch"]]
    name = f"sm_{row['arch']} {row['kernel']} {row['config']}"
    assert row["spill_bytes"] == 0, f"{name}: {row['spill_bytes']} bytes of register spills ({row['regs']} registers)"
    assert "f32:tf32" not in row["dots"], f"{name}: a float32 dot in plain TF32 ({row['dots']}); use ieee or tf32x3"
    assert row["smem"] <= lim.smem_per_block, f"{name}: {row['smem']} B shared memory > {lim.smem_per_block} B"
    assert row["blocks_per_sm"] >= 1, f"{name}: no block fits on an SM ({row['regs']} regs, {row['smem']} B smem)"


@pytest.mark.skipif(TRITON_MISSING is not None, reason=str(TRITON_MISSING))
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("module,kernel,label", _triton_configs())
def test_triton_config_compiles_clean(arch, module, kernel, label):
    _check(_triton_rows(arch)[(kernel, label)])


@pytest.mark.skipif(NVCC_MISSING is not None, reason=str(NVCC_MISSING))
@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_kernels_compile_clean(arch):
    rows = _cuda_rows(arch)
    assert rows, "no CUDA kernels found in the ptxas report"
    failures = []
    for row in rows:
        try:
            _check(row)
        except AssertionError as e:
            failures.append(str(e))
    assert not failures, "\n".join(failures)


@pytest.mark.skipif(TRITON_MISSING is not None, reason=str(TRITON_MISSING))
def test_dot_precision_parser_matches_installed_triton():
    """dot_precisions reads an omitted inputPrecision as ieee (MLIR drops the default): check that on this Triton, with
    a dot compiled at each precision (in a fresh process: this one interprets Triton kernels)."""
    got = gc.probe_dot_precisions(("ieee", "tf32", "tf32x3"))
    assert got == {p: [f"f32:{p}"] for p in ("ieee", "tf32", "tf32x3")}, got
