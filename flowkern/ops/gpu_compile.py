"""Compile-only GPU resource checks: registers, spills, shared memory, occupancy and dot precision of every kernel.

Nothing here needs a GPU: Triton compiles for a GPUTarget with its bundled ptxas, and nvcc compiles csrc/cuda/*.cu.
    triton_resources(arch)   one row per (Triton kernel, launch config) the dispatch can pick
    cuda_resources(arch)     one row per CUDA kernel in csrc/cuda
Each Triton module lists its configs in launch_configs() (LaunchConfig records), derived from the launchers' own
block-size helpers so the check cannot drift from what runs.
"""
import ast
import concurrent.futures
import hashlib
import importlib
import importlib.util
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from typing import Any, Callable, Dict, List, NamedTuple, Optional

import torch


class LaunchConfig(NamedTuple):
    """One compilation a Triton launcher can ask for."""
    fn: Callable                 # the @triton.jit kernel
    signature: Dict[str, str]    # runtime args: "*fp32", "i32", ...
    constexprs: Dict[str, Any]   # constexpr args, and pointer args passed as None
    num_warps: Optional[int]     # None: Triton's default (the launcher passes none)
    num_stages: Optional[int]    # None: Triton's default (the launcher passes none)
    label: str


_POINTER_TYPES = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float64: "*fp64"}

# Input dtypes the GPU paths accept.
GPU_DTYPES = tuple(_POINTER_TYPES)


def pointer_type(dtype: torch.dtype) -> str:
    """Triton signature type of a pointer to dtype elements."""
    return _POINTER_TYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return _POINTER_TYPES[dtype][1:]


# ---------------------------------------------------------------------------------------------------------------
# Per-SM limits (CUDA programming guide, compute capabilities table).
class ArchLimits(NamedTuple):
    regs_per_sm: int
    smem_per_sm: int      # bytes
    smem_per_block: int   # bytes, the opt-in maximum of one block
    threads_per_sm: int
    blocks_per_sm: int
    regs_per_thread: int


ARCH_LIMITS = {
    80: ArchLimits(65536, 164 * 1024, 163 * 1024, 2048, 32, 255),
    90: ArchLimits(65536, 228 * 1024, 227 * 1024, 2048, 32, 255),
}
REG_ALLOC_UNIT = 256        # registers are allocated per warp in units of 256
RESERVED_SMEM = 1024        # shared memory the driver reserves per block (sm_80 and later)


def occupancy(arch: int, regs: int, warps: int, smem: int) -> Dict[str, Any]:
    """Resident blocks per SM and occupancy (resident warps / max warps) of a kernel with `regs` registers per
    thread, `warps` warps per block and `smem` bytes of shared memory per block (static + dynamic)."""
    lim = ARCH_LIMITS[arch]
    max_warps = lim.threads_per_sm // 32
    regs_per_warp = -(-max(regs, 1) * 32 // REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    by_regs = (lim.regs_per_sm // regs_per_warp) // warps if regs <= lim.regs_per_thread else 0
    by_smem = lim.smem_per_sm // (smem + RESERVED_SMEM) if smem <= lim.smem_per_block else 0
    blocks = min(lim.blocks_per_sm, max_warps // warps, by_regs, by_smem)
    limiter = min((("blocks", lim.blocks_per_sm), ("threads", max_warps // warps), ("regs", by_regs),
                   ("smem", by_smem)), key=lambda kv: kv[1])[0]
    return {"blocks_per_sm": blocks, "occupancy": blocks * warps / max_warps, "limiter": limiter}


class CompilerMissing(RuntimeError):
    """A compiler the check needs is not installed (the tests skip with this message)."""


def _cache_dir() -> str:
    d = os.environ.get("FLOWKERN_GPU_COMPILE_CACHE") or os.path.join(tempfile.gettempdir(), "flowkern_gpu_compile")
    os.makedirs(d, exist_ok=True)
    return d


# ---------------------------------------------------------------------------------------------------------------
# Triton

TRITON_MODULES = ("channel_affine", "affine_coupling")  # flowkern.ops.triton modules with launch_configs()


def _triton_bin(tool: str) -> str:
    """Path of a tool Triton bundles (ptxas, cuobjdump), or CompilerMissing."""
    try:
        import triton.backends.nvidia as nv
    except ImportError as e:
        raise CompilerMissing(f"triton with its NVIDIA backend is not installed ({e})")
    env = os.environ.get(f"TRITON_{tool.upper()}_PATH")
    for path in (env, os.path.join(os.path.dirname(nv.__file__), "bin", tool), shutil.which(tool)):
        if path and os.access(path, os.X_OK):
            return path
    raise CompilerMissing(f"{tool} not found: neither TRITON_{tool.upper()}_PATH, triton's backends/nvidia/bin "
                          "nor PATH has it")


_DOT = re.compile(r"=\s*tt\.dot\s(?P<rest>.*)")
_PRECISION = re.compile(r"inputPrecision\s*=\s*(\w+)")
_OPERAND = re.compile(r":\s*tensor<[0-9x]+x(\w+)>")


def dot_precisions(ttir: str) -> List[str]:
    """'<operand type>:<input precision>' of every tt.dot in the TTIR, e.g. 'f32:ieee'. Read from TTIR, before
    lowering: the TTGIR splits a tf32x3 dot into three tf32 dots. MLIR omits a default-valued attribute, and the
    default input precision is ieee (a dot written with input_precision="ieee" prints none; see
    tests/ops/test_gpu_compile.py, which checks this on the installed Triton)."""
    found = []
    for line in ttir.splitlines():
        m = _DOT.search(line)
        if m:
            prec = _PRECISION.search(m.group("rest"))
            operand = _OPERAND.search(m.group("rest"))
            found.append(f"{operand.group(1) if operand else '?'}:{prec.group(1) if prec else 'ieee'}")
    return found


def _cubin_resources(cubin: bytes) -> Dict[str, int]:
    """REG and LOCAL (bytes per thread of local memory: spills, as Triton's n_spills = LOCAL / 4) of a one-kernel
    cubin, read with cuobjdump (no GPU needed)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_triton_bin("cuobjdump"), "--dump-resource-usage", f.name], capture_output=True,
                             text=True, check=True).stdout
    fields = dict(re.findall(r"(\w+):(\d+)", out.split("Function", 1)[1]))
    return {"regs": int(fields["REG"]), "spill_bytes": int(fields["LOCAL"]), "stack": int(fields["STACK"])}


def compile_triton(config: LaunchConfig, arch: int):
    """triton.compile of one launch config for cuda:<arch>, without a GPU (results land in Triton's cache)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from triton.runtime.jit import JITFunction

    _triton_bin("ptxas")
    fn = config.fn
    if not isinstance(fn, JITFunction):  # TRITON_INTERPRET=1 (the CPU tests): fine for a kernel without jit helpers
        fn = JITFunction(fn.fn)
    # Every argument in order; constexprs (and None pointers) typed "constexpr".
    signature = {name: config.signature.get(name, "constexpr") for name in fn.arg_names}
    options = {k: v for k, v in (("num_warps", config.num_warps), ("num_stages", config.num_stages)) if v is not None}
    with warnings.catch_warnings():  # triton 3.9 warns once about the FP-fusion default, which the launch shares
        warnings.simplefilter("ignore", UserWarning)
        return triton.compile(ASTSource(fn, signature, config.constexprs), target=GPUTarget("cuda", arch, 32),
                              options=options)




def _triton_row(job) -> Dict[str, Any]:
    module, index, arch = job
    config = list(importlib.import_module(f"flowkern.ops.triton.{module}").launch_configs())[index]
    kernel = compile_triton(config, arch)
    md = kernel.metadata
    res = _cubin_resources(kernel.asm["cubin"])
    smem = md.shared  # Triton's kernels use dynamic shared memory only; this is what the launch passes
    return {"arch": arch, "source": "triton", "kernel": config.fn.__name__, "config": config.label,
            "warps": md.num_warps, **res, "smem": smem, "smem_note": "",
            **occupancy(arch, res["regs"], md.num_warps, smem), "dots": dot_precisions(kernel.asm["ttir"])}


def triton_resources(arch: int, jobs: Optional[int] = None) -> List[Dict[str, Any]]:
    """One row per (kernel, launch config) of every module in TRITON_MODULES, compiled for cuda:<arch>. Compiles
    run in `jobs` processes (default: all CPUs); Triton's cache makes a second run cheap."""
    import triton

    _triton_bin("ptxas")
    _triton_bin("cuobjdump")
    # The rows depend only on these sources, the arch and the Triton version: cache them (a warm run spawns nothing).
    key = hashlib.sha256(f"{triton.__version__} {arch}".encode())
    for path in [__file__] + [importlib.util.find_spec(f"flowkern.ops.triton.{m}").origin for m in TRITON_MODULES]:
        key.update(open(path, "rb").read())
    cached = os.path.join(_cache_dir(), f"triton-sm{arch}-{key.hexdigest()[:24]}.json")
    if os.path.exists(cached):
        return json.load(open(cached))
    work = [(module, i, arch) for module in TRITON_MODULES
            for i, _ in enumerate(importlib.import_module(f"flowkern.ops.triton.{module}").launch_configs())]
    # Fresh processes: they compile in parallel, and import the kernels with the interpreter off (the CPU test
    # suite sets TRITON_INTERPRET=1, which turns @triton.jit functions into interpreted ones that cannot compile).
    with concurrent.futures.ProcessPoolExecutor(jobs or os.cpu_count() or 1, initializer=_compile_env,
                                                mp_context=multiprocessing.get_context("spawn")) as pool:
        rows = list(pool.map(_triton_row, work))
    with open(cached + ".tmp", "w") as f:
        json.dump(rows, f)
    os.replace(cached + ".tmp", cached)
    return rows


def _compile_env():
    os.environ["TRITON_INTERPRET"] = "0"


def _probe_dot(precision: str) -> List[str]:
    from flowkern.ops.triton.precision_probe import probe_dot_kernel

    config = LaunchConfig(probe_dot_kernel, {"a_ptr": "*fp32", "c_ptr": "*fp32"}, {"PRECISION": precision}, 4, None,
                          precision)
    return dot_precisions(compile_triton(config, 90).asm["ttir"])


def probe_dot_precisions(precisions=("ieee", "tf32", "tf32x3")) -> Dict[str, List[str]]:
    """{precision: what dot_precisions reads back} for a float32 dot compiled with each input precision on the
    installed Triton, in a fresh process with the interpreter off: checks the parser (MLIR omits a default-valued
    attribute) against this Triton."""
    _triton_bin("ptxas")
    with concurrent.futures.ProcessPoolExecutor(1, initializer=_compile_env,
                                                mp_context=multiprocessing.get_context("spawn")) as pool:
        return dict(zip(precisions, pool.map(_probe_dot, precisions)))


# ---------------------------------------------------------------------------------------------------------------
# CUDA

def source_root() -> str:
    """The flowkern source checkout holding csrc/ and setup.py: FLOWKERN_SOURCE_DIR, else the folder above this
    module (an editable install), else the current folder or one above it (a test run from the checkout, with
    flowkern installed elsewhere). A plain installed package ships no csrc/: then SourcesMissing."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    candidates = [os.environ.get("FLOWKERN_SOURCE_DIR"), here]
    d = os.getcwd()
    while True:
        candidates.append(d)
        if os.path.dirname(d) == d:
            break
        d = os.path.dirname(d)
    for root in candidates:
        if root and os.path.exists(os.path.join(root, "csrc", "kernels.h")) and os.path.exists(
                os.path.join(root, "setup.py")):
            return root
    raise SourcesMissing("flowkern's CUDA sources (csrc/) are not here: run from a source checkout or set "
                         "FLOWKERN_SOURCE_DIR")


class SourcesMissing(CompilerMissing):
    """The CUDA sources are not reachable (an installed package run from outside its checkout)."""

# Dynamic shared memory of each kernel that uses it: the launcher's expression, verbatim (checked against the
# source, so an edit there fails here instead of drifting), evaluated at the largest C the kernel serves.
_DYNAMIC_SMEM = {
    "channel_affine_fwd_kernel": "sizeof(Acc) * (size_t)(C * C + C + C * TP)",
    "channel_affine_bwd_kernel": "sizeof(Acc) * (size_t)(C * C + 2 * C * (TP + 1))",
}
_SHORT_TYPES = {"float": "fp32", "double": "fp64", "__half": "fp16", "__nv_bfloat16": "bf16"}


def _find_nvcc() -> str:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.access(os.path.join(home, "bin", "nvcc"), os.X_OK):
            return os.path.join(home, "bin", "nvcc")
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    if nvcc is None:
        raise CompilerMissing("nvcc not found (CUDA_HOME, CUDA_PATH, PATH, /usr/local/cuda)")
    return nvcc


def _nvcc_flags() -> List[str]:
    """setup.py's NVCC_FLAGS (read, not imported: importing setup.py runs the build), without its -gencode list."""
    tree = ast.parse(open(os.path.join(source_root(), "setup.py")).read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "NVCC_FLAGS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise RuntimeError("setup.py no longer assigns NVCC_FLAGS as a list literal; update gpu_compile._nvcc_flags")


def _ptxas_log(nvcc: str, source: str, arch: int) -> str:
    """nvcc's ptxas -v report for one .cu file, cached by the sources, flags, arch and nvcc version."""
    csrc = os.path.join(source_root(), "csrc")
    cmd = [nvcc, "-cubin", f"-arch=sm_{arch}", "-I", csrc, *_nvcc_flags(), "-Xptxas", "-v", source, "-o", os.devnull]
    key = hashlib.sha256(" ".join(cmd).encode())
    key.update(subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.encode())
    for folder in (os.path.join(csrc, "cuda"), csrc):
        for name in sorted(os.listdir(folder)):
            if name.endswith((".cu", ".cuh", ".h")):
                key.update(open(os.path.join(folder, name), "rb").read())
    path = os.path.join(_cache_dir(), f"ptxas-{key.hexdigest()[:24]}.log")
    if not os.path.exists(path):
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"nvcc failed on {source} for sm_{arch}:\n{out.stderr[-4000:]}")
        with open(path + ".tmp", "w") as f:
            f.write(out.stdout + out.stderr)
        os.replace(path + ".tmp", path)
    return open(path).read()


def _demangle(names: List[str]) -> List[str]:
    cxxfilt = shutil.which("c++filt") or shutil.which("llvm-cxxfilt")
    if cxxfilt is None:
        return names
    return subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()


def _split_top(text: str, sep: str) -> List[str]:
    """text split at `sep` outside <...> and (...)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth -= 1
        if depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            start = i + len(sep)
    return parts + [text[start:]]


def _short_name(demangled: str):
    """'void flowkern::cuda::(anonymous namespace)::k<float, 64, 2>(float const*, ...)' -> ('k', ['fp32', '64', '2'])
    """
    head = demangled.replace("(anonymous namespace)::", "").split(" ", 1)[-1]  # drop the return type
    head = head[:head.index("(")] if "<" not in head.split("(")[0] else head[:head.index(">(") + 1]
    head = _split_top(head, "::")[-1]
    name, _, targs = head.partition("<")
    args = [_SHORT_TYPES.get(a.strip(), a.strip()) for a in _split_top(targs[:-1], ",") if a.strip()]
    return name, args


def _cuda_launch(name: str, targs: List[str], text: str, max_channels: int):
    """(threads per block, dynamic smem bytes, note) of a kernel as its launcher sets them."""
    threads = re.search(r"constexpr int kThreads = (\d+);", text)
    blocks = re.findall(r"<<<[^,]+,\s*([^,]+),", text)
    if threads is None or any(b.strip() != "kThreads" for b in blocks):
        raise RuntimeError("a CUDA launch uses a block size other than kThreads: teach gpu_compile._cuda_launch")
    if name not in _DYNAMIC_SMEM:
        return int(threads.group(1)), 0, ""
    expr = _DYNAMIC_SMEM[name]
    if expr not in text:
        raise RuntimeError(f"{name}'s launcher no longer sizes its shared memory as `{expr}`: update "
                           "gpu_compile._DYNAMIC_SMEM")
    T, TP, MT = targs  # <T, TP, MT>: channel bucket MT serves C <= 16 * MT
    C = min(16 * int(MT), max_channels)
    acc = 8 if T == "fp64" else 4
    smem = eval(expr.replace("sizeof(Acc)", str(acc)).replace("(size_t)", ""), {}, {"C": C, "TP": int(TP)})
    return int(threads.group(1)), smem, f"dynamic smem at C={C}"


def cuda_resources(arch: int) -> List[Dict[str, Any]]:
    """One row per kernel in csrc/cuda/*.cu compiled for sm_<arch>: ptxas registers, spills and static shared memory,
    plus the launcher's block size and dynamic shared memory (at the largest C the kernel serves)."""
    nvcc = _find_nvcc()
    csrc = os.path.join(source_root(), "csrc")
    max_channels = int(re.search(r"kCudaMaxChannels = (\d+);",
                                 open(os.path.join(csrc, "kernels.h")).read()).group(1))
    rows = []
    cuda_dir = os.path.join(csrc, "cuda")
    for file in sorted(f for f in os.listdir(cuda_dir) if f.endswith(".cu")):
        source = os.path.join(cuda_dir, file)
        text = open(source).read()
        # ptxas prints, per kernel: "Function properties for <mangled>", its stack/spill line, "Used N registers..."
        found = re.findall(r"Function properties for (\S+)\s+(\d+) bytes stack frame, (\d+) bytes spill stores, "
                           r"(\d+) bytes spill loads\s+ptxas info\s+: Used (\d+) registers([^\n]*)",
                           _ptxas_log(nvcc, source, arch))
        for (mangled, stack, spill_st, spill_ld, regs, rest), demangled in zip(found, _demangle([f[0] for f in found])):
            name, targs = _short_name(demangled)
            threads, dynamic, note = _cuda_launch(name, targs, text, max_channels)
            static = re.search(r"(\d+) bytes smem", rest)
            smem = (int(static.group(1)) if static else 0) + dynamic
            warps = threads // 32
            rows.append({"arch": arch, "source": "cuda", "kernel": name, "config": f"<{', '.join(targs)}>",
                         "warps": warps, "regs": int(regs), "spill_bytes": int(spill_st) + int(spill_ld),
                         "stack": int(stack), "smem": smem, "smem_note": note,
                         **occupancy(arch, int(regs), warps, smem), "dots": []})
    return sorted(rows, key=lambda r: (r["kernel"], r["config"]))
