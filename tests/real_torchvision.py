"""The real torchvision package, importable next to the CPU build of torch.

torchvision 0.28.0 is the release for torch 2.13.0 (the dev extra pins it).
PyPI has only one Linux x86-64 wheel of it, built against the CUDA build of
torch: its C++ extension `torchvision/_C.so` links `libtorch_cuda.so` and
`libc10_cuda.so`, which the CPU build of torch does not ship, so the
extension does not load. torchvision handles that for every operator but
two: `torchvision/_meta_registrations.py` registers fake kernels for
`torchvision::nms` and `torchvision::qnms` without checking that they
exist, and `import torchvision` fails with "operator torchvision::nms does
not exist" (pytorch/vision#9085; 0.29 still does it). The fix torchvision's
maintainers give is the CPU wheel from PyTorch's own package index, which
is not PyPI: CI and the developers' machines reach only PyPI, and PyPI has
no torchvision source distribution to build from.

So, only when the extension cannot load, `import_torchvision` declares the
schemas of those two operators with `torch.library` (public API) before
importing torchvision. Everything the tests then run is torchvision's own
code, as installed: `torchvision.models.alexnet`, its transforms and its
weights' metadata. None of them uses a C++ operator; calling one (e.g.
`torchvision.ops.nms`) still fails with torchvision's own "Couldn't load
custom C++ ops" error. Where the extension loads (a CUDA torch, or the CPU
wheel from PyTorch's index) torchvision is imported untouched.
"""

import importlib.util
import sys
from pathlib import Path

_UNGUARDED_OPERATORS = ("nms", "qnms")
# torch.library keeps a definition only while its Library object lives.
_DECLARATIONS = []


def import_torchvision():
    """Imports and returns the installed torchvision (see the module docstring)."""
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        raise ImportError("torchvision is not installed: pip install -e '.[dev]'")
    extension = next(Path(spec.submodule_search_locations[0]).glob("_C*.so"), None)
    try:
        if extension is None:
            raise OSError(f"torchvision has no C++ extension in {spec.origin}")
        torch.ops.load_library(str(extension))
    except OSError:
        library = torch.library.Library("torchvision", "FRAGMENT")
        for name in _UNGUARDED_OPERATORS:
            library.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _DECLARATIONS.append(library)
    import torchvision

    return torchvision
