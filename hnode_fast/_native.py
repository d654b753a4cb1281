"""Access to the compiled extension ``hnode_fast._C`` and a description of the build.

The extension is built by CMake (scikit-build-core) from ``csrc/``. It never links
libtorch: kernels receive raw pointers and sizes, so one build works with any torch.
"""

from __future__ import annotations

import importlib.util
import platform
from types import ModuleType
from typing import Any, Dict, List, Optional

from ._version import __version__

_BUILD_HINT = (
    "The compiled extension hnode_fast._C is missing or failed to load. Build and install "
    "the package from the repository root with `pip install .` (CPU-only: "
    "`HNODE_CUDA=OFF pip install .`). If you are running from a source checkout, run "
    "from another directory so the installed package is imported instead of the sources."
)


def _load_installed_extension() -> Optional[ModuleType]:
    """Load ``_C`` from the *installed* distribution when this module comes from a source
    checkout that has no compiled module (e.g. ``python -m pytest`` run from the repo root
    puts the checkout ahead of site-packages). Only a distribution with the same version is
    used. Returns the module or None."""
    import importlib.machinery
    import os
    import sys
    from importlib import metadata

    try:
        dist = metadata.distribution("hnode_fast")
    except metadata.PackageNotFoundError:
        return None
    if dist.version != __version__:
        return None
    here = os.path.dirname(os.path.abspath(__file__))
    names = {"_C" + suffix for suffix in importlib.machinery.EXTENSION_SUFFIXES}
    for f in dist.files or ():
        if len(f.parts) != 2 or f.parts[0] != "hnode_fast" or f.parts[1] not in names:
            continue
        path = os.path.abspath(str(dist.locate_file(f)))
        if os.path.dirname(path) == here or not os.path.isfile(path):
            continue
        name = f"{__package__}._C"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            continue
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        sys.modules[name] = mod
        setattr(sys.modules[__package__], "_C", mod)
        return mod
    return None


_C: Optional[ModuleType]  # the compiled module, or None when it is missing
try:
    from . import _C  # noqa: F401  (compiled module)
except ImportError as _exc:
    _IMPORT_ERROR: "ImportError | None" = _exc
    try:
        _C = _load_installed_extension()
    except Exception:  # pragma: no cover - a broken install must not break `import hnode_fast`
        _C = None
else:
    _IMPORT_ERROR = None


def _lib() -> Any:
    """Return the compiled module, or raise ImportError explaining how to build it."""
    if _C is None:
        raise ImportError(f"{_BUILD_HINT} (original error: {_IMPORT_ERROR})") from _IMPORT_ERROR
    return _C


def has_cuda() -> bool:
    """True when the extension was compiled with CUDA kernels (says nothing about a GPU
    being present now; see ``build_info()['cuda_device_count']``)."""
    return bool(_lib().build_info()["cuda"])


def cuda_device_count() -> int:
    """Number of CUDA devices the compiled runtime sees; 0 without CUDA build, driver or GPU."""
    return int(_lib().cuda_device_count())


def build_info() -> Dict[str, Any]:
    """Describe what was compiled and what is available at runtime.

    Keys from the extension: ``cuda`` (bool, compiled with CUDA), ``cuda_archs`` (list of
    int, e.g. ``[80, 90]``; empty without CUDA), ``cuda_compiler`` (nvcc version string or
    None), ``cuda_runtime_version`` (int such as 13000, or None), ``cxx_compiler`` (e.g.
    ``"GNU 12.2.0"``), ``openmp`` (bool).
    Added here: ``version``, ``cpu`` (always True), ``triton`` (triton importable; it is
    not imported), ``torch`` (torch version), ``python``, ``cuda_runtime_available``
    (``torch.cuda.is_available()``), ``cuda_device_count`` (devices seen by the
    extension's own CUDA runtime) and ``extension_path`` (file of the loaded ``_C``).
    """
    info: Dict[str, Any] = dict(_lib().build_info())
    info["version"] = __version__
    info["cpu"] = True
    info["triton"] = importlib.util.find_spec("triton") is not None
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda_runtime_available"] = bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover - torch is a hard dependency
        info["torch"] = None
        info["cuda_runtime_available"] = False
    info["python"] = platform.python_version()
    info["cuda_device_count"] = cuda_device_count()
    info["extension_path"] = getattr(_C, "__file__", None)
    return info


def dopri5_tableau() -> Dict[str, List]:
    """The Dormand-Prince 5(4) tableau compiled into the kernels, as nested lists of floats
    with scipy ``RK45`` shapes: ``C`` (6), ``A`` (6, 5), ``B`` (6), ``E`` (7), ``P`` (7, 4);
    plus ``n_stages``, ``order``, ``error_estimator_order``."""
    return dict(_lib().dopri5_tableau())


__all__ = ["build_info", "dopri5_tableau", "has_cuda", "cuda_device_count"]
