"""The compiled extension (``kiln._kiln``), re-exported."""

from ._kiln import CompileError, Region, UnsupportedNode, import_graph, supported_targets  # noqa: F401
