"""Build script.

Metadata lives in pyproject.toml; this file builds the compiled extension
``flatmin_kernels._C`` from csrc/ with torch's extension builder and ninja:

* the CPU part (csrc/bindings.cpp, csrc/cpu/*.cpp) wherever a C++ compiler is present;
* the CUDA part (csrc/cuda/*.cu) too when the installed torch has CUDA and nvcc is found;
* nothing at all with FLATMIN_BUILD_EXT=0 (the package then runs on its other backends).

torch must be importable at build time, so install with
``pip install --no-build-isolation -e .`` (build isolation would fetch a second torch).
"""
import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _ext_modules():
    if os.environ.get("FLATMIN_BUILD_EXT", "1") == "0":
        print("flatmin_kernels: FLATMIN_BUILD_EXT=0, not building the _C extension")
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        # Under pip's build isolation torch is not importable here (and must not be fetched:
        # that would be a second, multi-GB torch). Build the pure-Python package; the cpp
        # backend then reports itself unavailable and the others are used.
        print(
            "flatmin_kernels: torch is not importable at build time, so the _C extension is not "
            "built; install torch first, then `pip install --no-build-isolation -e .` to build it"
        )
        return [], {}

    os.environ.setdefault("MAX_JOBS", "2")  # CI has 2 cores
    sources = [os.path.relpath(p, ROOT) for p in
               ["csrc/bindings.cpp", "csrc/table.cpp", *sorted(glob.glob(f"{ROOT}/csrc/cpu/*.cpp"))]]
    include_dirs = [os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc")]
    # -fno-math-errno and -fno-trapping-math let the element loops vectorise (no errno branch,
    # selects on floats); neither changes a result: no reassociation, no fast-math.
    # -ffp-contract=off: no fused multiply-adds, so every instruction set (csrc/cpu/isa_*.cpp)
    # rounds as the torch reference does. -Wno-psabi: GCC's note on passing vector types.
    # -fvisibility=hidden: only the module's init is exported (as pybind11's own types are).
    # The C++ standard is the one torch asks for.
    cxx_flags = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off", "-Wno-psabi",
                 "-fvisibility=hidden", "-fopenmp"]
    extra_link_args = ["-fopenmp"]  # torch's own libgomp is the one loaded at run time

    with_cuda = (
        torch.version.cuda is not None
        and cpp_extension.CUDA_HOME is not None
        and os.environ.get("FLATMIN_BUILD_CUDA", "1") != "0"
    )
    if with_cuda:
        sources += [os.path.relpath(p, ROOT) for p in sorted(glob.glob(f"{ROOT}/csrc/cuda/*.cu"))]
        extension = cpp_extension.CUDAExtension
        extra = {
            "cxx": cxx_flags + ["-DFLATMIN_WITH_CUDA"],
            # --fmad=false: the same roundings as the CPU build and the reference (no contraction)
            "nvcc": ["-O3", "-DFLATMIN_WITH_CUDA", "-lineinfo", "--fmad=false"],
        }
        print("flatmin_kernels: building _C for the CPU and CUDA")
    else:
        extension = cpp_extension.CppExtension
        extra = {"cxx": cxx_flags}
        reason = "torch has no CUDA" if torch.version.cuda is None else "nvcc not found (CUDA_HOME unset)"
        print(f"flatmin_kernels: building _C for the CPU only ({reason})")

    ext = extension(
        name="flatmin_kernels._C",
        sources=sources,
        include_dirs=include_dirs,
        extra_compile_args=extra,
        extra_link_args=extra_link_args,
    )
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _ext_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
