"""Build flowkern._C: CPU kernels always, CUDA kernels when nvcc is found.

Environment:
  FLOWKERN_CUDA        auto (default) | 0 | 1   -- 1 fails the build if nvcc is missing
  FLOWKERN_CUDA_ARCHS  "80;90" (default): compute capabilities to build SASS for (PTX of the last one is embedded)
  FLOWKERN_BUILD_JOBS  parallel compile jobs (default: number of CPUs)
  CUDA_HOME / CUDA_PATH  toolkit root, if nvcc is not on PATH

flowkern._C never sees torch: it works on raw pointers (csrc/README.md), so it builds under pip's build isolation and
one build serves any torch >= 2.4. When torch is importable here (`pip install --no-build-isolation .`, as `make`
installs), flowkern._C_eager is built too: the same CPU kernels behind torch-linked entry points (csrc/eager/), for
the CPU's eager calls, tied to that torch version. Without it flowkern runs the same kernels through Python.
  FLOWKERN_EAGER       auto (default) | 0 | 1   -- 1 fails the build if torch cannot be imported
"""
import os
import shutil
import subprocess
import sys

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(folder, suffix):
    d = os.path.join("csrc", folder)
    return sorted(os.path.join(d, f) for f in os.listdir(os.path.join(ROOT, d)) if f.endswith(suffix))


def _find_nvcc():
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    nvcc = shutil.which("nvcc")
    if nvcc:
        return nvcc
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda/bin/nvcc"
    return None


def _cuda_lib_dir(nvcc):
    """The folder holding libcudart_static.a. nvcc may be a wrapper script, so ask nvcc itself."""
    candidates = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.environ[var])
    try:  # "nvcc --dryrun" on an empty compile prints the TOP path of the toolkit it uses
        out = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60).stderr
        for line in out.splitlines():
            if line.startswith("#$ TOP="):
                candidates.append(line.split("=", 1)[1].strip())
    except (OSError, subprocess.SubprocessError):
        pass
    candidates += [os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "/usr/local/cuda"]
    for home in candidates:
        for sub in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib"),
                    os.path.join("targets", "sbsa-linux", "lib")):
            d = os.path.join(home, sub)
            if os.path.exists(os.path.join(d, "libcudart_static.a")):
                return d
    return None


mode = os.environ.get("FLOWKERN_CUDA", "auto").strip().lower()
if mode not in ("auto", "0", "1"):
    sys.exit(f"FLOWKERN_CUDA must be auto, 0 or 1, got {mode!r}")
NVCC = _find_nvcc() if mode != "0" else None
CUDA_LIB = _cuda_lib_dir(NVCC) if NVCC else None
WITH_CUDA = bool(NVCC and CUDA_LIB)
if mode == "1" and not WITH_CUDA:
    sys.exit("FLOWKERN_CUDA=1 but nvcc (or libcudart_static.a beside it) was not found; set CUDA_HOME")
if mode == "auto" and NVCC and not CUDA_LIB:
    print("flowkern: nvcc found but not libcudart_static.a; building without CUDA", file=sys.stderr)

_archs = os.environ.get("FLOWKERN_CUDA_ARCHS", "80;90").replace(",", ";").split(";")
ARCHS = [a.strip().replace(".", "") for a in _archs if a.strip()]
NVCC_FLAGS = ["-O3", "-std=c++17", "--use_fast_math", "-Xcompiler", "-fPIC", "-lineinfo",
              "--expt-relaxed-constexpr", "-DFLOWKERN_WITH_CUDA"]
for a in ARCHS:
    NVCC_FLAGS += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
if ARCHS:  # PTX of the newest arch, so newer GPUs can JIT it
    NVCC_FLAGS += ["-gencode", f"arch=compute_{ARCHS[-1]},code=compute_{ARCHS[-1]}"]


class BuildExt(build_ext):
    """build_ext that sends .cu files to nvcc (works with pybind11's ParallelCompile, which calls _compile)."""

    def build_extensions(self):
        self.compiler.src_extensions.append(".cu")
        default_compile = self.compiler._compile

        def _compile(obj, src, ext, cc_args, extra_postargs, pp_opts):
            if not src.endswith(".cu"):
                return default_compile(obj, src, ext, cc_args, extra_postargs, pp_opts)
            inc = [a for a in pp_opts if a.startswith(("-I", "-D"))]
            cmd = [NVCC, "-c", src, "-o", obj] + inc + NVCC_FLAGS
            print(" ".join(cmd))
            subprocess.check_call(cmd)

        self.compiler._compile = _compile
        super().build_extensions()


sources = ["csrc/bindings.cpp"] + _sources("cpu", ".cpp")
define_macros = []
libraries, library_dirs = [], []
if WITH_CUDA:
    sources += _sources("cuda", ".cu")
    define_macros.append(("FLOWKERN_WITH_CUDA", None))
    # static cudart: the module imports on machines without a CUDA runtime or driver and reports why
    libraries += ["cudart_static", "dl", "rt", "pthread"]
    library_dirs.append(CUDA_LIB)

ext = Pybind11Extension(
    "flowkern._C",
    sources,
    include_dirs=[os.path.join(ROOT, "csrc")],
    define_macros=define_macros + [("FLOWKERN_CUDA_ARCHS", f'"{";".join(ARCHS) if WITH_CUDA else ""}"')],
    libraries=libraries,
    library_dirs=library_dirs,
    cxx_std=17,
    extra_compile_args=["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"],
    extra_link_args=["-fopenmp"],
)

def _eager_extension():
    """flowkern._C_eager, or None when torch is not importable (pip's build isolation) or FLOWKERN_EAGER=0."""
    want = os.environ.get("FLOWKERN_EAGER", "auto").strip().lower()
    if want not in ("auto", "0", "1"):
        sys.exit(f"FLOWKERN_EAGER must be auto, 0 or 1, got {want!r}")
    if want == "0":
        return None
    try:
        import torch
        from torch.utils.cpp_extension import include_paths, library_paths
    except Exception as e:  # ImportError, or a torch that is installed but does not load (OSError, RuntimeError)
        if want == "1":
            sys.exit(f"FLOWKERN_EAGER=1 but torch cannot be imported here ({e}); use pip install --no-build-isolation")
        print(f"flowkern: torch is not importable at build time ({e}; build isolation?): building without _C_eager; "
              "the CPU's eager calls go through Python (pip install --no-build-isolation . builds it)", file=sys.stderr)
        return None
    from setuptools import Extension
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return Extension(
        "flowkern._C_eager",
        _sources("eager", ".cpp") + _sources("cpu", ".cpp"),
        include_dirs=[os.path.join(ROOT, "csrc")] + include_paths(),  # torch's headers bring their pybind11
        library_dirs=library_paths(),
        libraries=["c10", "torch", "torch_cpu", "torch_python"],
        runtime_library_dirs=library_paths(),
        define_macros=[("TORCH_EXTENSION_NAME", "_C_eager"), ("TORCH_API_INCLUDE_EXTENSION_H", None),
                       ("_GLIBCXX_USE_CXX11_ABI", str(abi)), ("FLOWKERN_TORCH_VERSION", f'"{torch.__version__}"')],
        # -g0: Python's own CFLAGS ask for debug info, 20 MB of it with torch's headers
        extra_compile_args=["-std=c++20", "-O3", "-g0", "-fopenmp", "-fno-math-errno", "-fno-trapping-math",
                            "-fvisibility=hidden"],
        extra_link_args=["-fopenmp"],
        language="c++",
        optional=want == "auto",  # auto: a compiler that cannot build it leaves flowkern on the Python path
    )


EAGER = _eager_extension()

ParallelCompile("FLOWKERN_BUILD_JOBS", default=0).install()
print(f"flowkern: building with CUDA={'yes (' + NVCC + ', archs ' + ';'.join(ARCHS) + ')' if WITH_CUDA else 'no'}, "
      f"_C_eager={'yes' if EAGER is not None else 'no'}", file=sys.stderr)

setup(
    packages=["flowkern", "flowkern.ops", "flowkern.ops.triton", "flowkern.nn", "flowkern.compat",
              "flowkern.models"],
    package_dir={"flowkern.models": "models"},
    ext_modules=[ext] + ([EAGER] if EAGER is not None else []),
    cmdclass={"build_ext": BuildExt},
    zip_safe=False,
)
