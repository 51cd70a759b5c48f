"""Builds and loads the flash-attention extension on first use.

Every ``csrc/*.cpp`` binding and every ``csrc/instantiations/*.cu`` kernel translation unit found is compiled
(one object per file, in parallel with ninja) into one shared library that registers the
``torch.ops.bridge_flash`` operators. The build is cached in ``$BRIDGE_KERNEL_BUILD_DIR`` (default
``~/.cache/bridge/flash``); torch's extension builder rebuilds only when a source or flag changes and
serialises concurrent builds (e.g. eight torchrun ranks) with a lock file.

Nothing here imports ``torch.utils.cpp_extension`` or runs a compiler until :func:`load_ops` is called, so
importing ``bridge.kernels`` stays cheap, also on machines without CUDA.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Optional

import torch

CSRC_DIR = Path(__file__).resolve().parent / "csrc"
EXTENSION_NAME = "bridge_flash_C"

# GPU targets, as nvcc -gencode arch names. sm_90a (Hopper) is the one that matters; "80" adds an
# Ampere/Ada build of the same mma.sync kernels (doubles compile time).
_ARCHS_ENV = "BRIDGE_FLASH_ARCHS"
_DEFAULT_ARCHS = ("90a",)

# The head dims the kernel is built for: the one table. The binding gets it as -DBRIDGE_FLASH_HEAD_DIMS, the
# Python layer (interface.SUPPORTED_HEAD_DIMS) imports it; each needs its csrc/instantiations/*_hd<D>.cu units.
HEAD_DIMS = (64, 128)

_load_lock = threading.Lock()
_loaded = False


def target_archs() -> tuple[str, ...]:
    """The nvcc targets to build (``$BRIDGE_FLASH_ARCHS``, comma separated, default ``90a``)."""
    raw = os.environ.get(_ARCHS_ENV, "")
    archs = tuple(a.strip() for a in raw.split(",") if a.strip()) or _DEFAULT_ARCHS
    for arch in archs:
        if arch not in ("90a", "80"):
            raise ValueError(f"{_ARCHS_ENV}={raw!r}: unsupported target {arch!r}; valid targets are 90a and 80")
    return archs


def supported_capabilities() -> tuple[tuple[int, int], ...]:
    """Compute capabilities the built kernel runs on (sm_90a code runs on exactly 9.0)."""
    caps: list[tuple[int, int]] = []
    for arch in target_archs():
        caps.extend([(9, 0)] if arch == "90a" else [(8, 0), (8, 6), (8, 7), (8, 9)])
    return tuple(caps)


def build_dir() -> Path:
    """Where the compiled extension is cached."""
    root = os.environ.get("BRIDGE_KERNEL_BUILD_DIR")
    return Path(root) if root else Path.home() / ".cache" / "bridge" / "flash"


def sources() -> list[Path]:
    """Every binding and kernel translation unit present (the backward files join when they land)."""
    return sorted(CSRC_DIR.glob("*.cpp")) + sorted((CSRC_DIR / "instantiations").glob("*.cu"))


def find_nvcc() -> Optional[str]:
    """Path of nvcc (``$CUDA_HOME``/``$CUDA_PATH``, then ``PATH``, then /usr/local/cuda), or None."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.is_file() else None


def is_built() -> bool:
    """True when a cached library exists that is newer than every source (no compile needed)."""
    libs = list(build_dir().glob(f"{EXTENSION_NAME}*.so"))
    if not libs:
        return False
    newest_lib = max(lib.stat().st_mtime for lib in libs)
    headers = list(CSRC_DIR.glob("*.h")) + list(CSRC_DIR.glob("*.cuh"))
    return all(src.stat().st_mtime <= newest_lib for src in sources() + headers)


def toolchain_missing_reason() -> Optional[str]:
    """One sentence naming the missing build tool, or None when the extension can be built (or is built)."""
    if _loaded or is_built():
        return None
    if find_nvcc() is None:
        return "nvcc was not found (set CUDA_HOME or put nvcc on PATH), so the flash kernel cannot be built"
    if shutil.which("ninja") is None:
        return "ninja was not found (pip install ninja), so the flash kernel cannot be built"
    if torch.version.cuda is None:
        return f"this PyTorch ({torch.__version__}) has no CUDA support, so the flash kernel cannot be built"
    return None


def nvcc_flags() -> list[str]:
    """The nvcc flags of every kernel translation unit: the one source for this builder and
    ``scripts/compile_kernels.sh`` (which prints them with ``python -m bridge.kernels.build --nvcc-flags``)."""
    flags = ["-O3", "-DNDEBUG", "--use_fast_math", "-std=c++17", "-lineinfo"]
    for arch in target_archs():
        flags.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
    # Tuning experiments, e.g. "-DBRIDGE_FWD_SM90_STAGES=3" (use a separate BRIDGE_KERNEL_BUILD_DIR).
    flags.extend(os.environ.get("BRIDGE_FLASH_EXTRA_CFLAGS", "").split())
    return flags


def binding_cflags() -> list[str]:
    """C++ flags of the torch bindings (csrc/*.cpp)."""
    return ["-O3", "-std=c++17", "-DBRIDGE_FLASH_HEAD_DIMS=" + ",".join(str(d) for d in HEAD_DIMS)]


def load_ops():
    """Builds (once) and loads the extension; returns the ``torch.ops.bridge_flash`` namespace."""
    global _loaded
    if _loaded:  # fast path: this runs on every kernel call
        return torch.ops.bridge_flash
    with _load_lock:
        if not _loaded:
            reason = toolchain_missing_reason()
            if reason is not None:
                raise RuntimeError(reason)
            from torch.utils.cpp_extension import load

            out_dir = build_dir()
            out_dir.mkdir(parents=True, exist_ok=True)
            if not is_built():
                print(f"building the flash kernel (once) into {out_dir} ...", file=sys.stderr, flush=True)
            cuda_flags = nvcc_flags()
            if os.environ.get("BRIDGE_FLASH_VERBOSE"):
                cuda_flags.append("-Xptxas=-v")  # register / spill report per kernel
            load(
                name=EXTENSION_NAME,
                sources=[str(s) for s in sources()],
                extra_cflags=binding_cflags(),
                extra_cuda_cflags=cuda_flags,
                extra_include_paths=[str(CSRC_DIR)],
                build_directory=str(out_dir),
                is_python_module=False,
                verbose=bool(os.environ.get("BRIDGE_FLASH_VERBOSE")),
            )
            _loaded = True
    return torch.ops.bridge_flash


def backward_is_built() -> bool:
    """True when the loaded extension registers the backward operator."""
    ops = load_ops()
    try:
        ops.bwd  # noqa: B018 - attribute lookup raises when the op was not registered
    except (AttributeError, RuntimeError):
        return False
    return True


if __name__ == "__main__":
    if sys.argv[1:] != ["--nvcc-flags"]:
        sys.exit("usage: python -m bridge.kernels.build --nvcc-flags   (prints the kernel units' nvcc flags)")
    print(" ".join(nvcc_flags()))
