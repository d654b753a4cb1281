# Type stub for the compiled pybind11 extension ``hnode_fast._C`` (built from csrc/ by CMake).
# Its functions depend on the build (CUDA-only entry points exist only in CUDA builds), so every
# attribute is typed ``Any``; see hnode_fast/_native.py and csrc/bindings.cpp.
from typing import Any

def __getattr__(name: str) -> Any: ...
