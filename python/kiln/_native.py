"""The compiled extension (``kiln._kiln``), re-exported."""

from ._kiln import Addresses, CompileError, Frozen, Region, UnsupportedNode, import_graph, set_tensor_access, supported_targets

__all__ = ["Addresses", "CompileError", "Frozen", "Region", "UnsupportedNode", "import_graph", "set_tensor_access", "supported_targets", "FAST_TENSOR_ACCESS"]


def _register_tensor_access() -> bool:
    """Lets the extension read tensors' data pointers through the C function PyTorch exports
    for Inductor's C++ wrappers (one call per tensor instead of a Python ``data_ptr()``).
    Without that export (another PyTorch), the extension calls ``data_ptr()``."""
    import torch

    try:
        from torch._C._dynamo.guards import _torchinductor_pyobject_tensor_data_ptr as address
    except ImportError:
        return False
    if not isinstance(address, int):
        return False
    return set_tensor_access(address, [torch.Tensor, torch.nn.Parameter])


FAST_TENSOR_ACCESS = _register_tensor_access()
