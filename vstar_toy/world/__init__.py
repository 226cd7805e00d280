"""The synthetic SID-tree world: it knows the truth (docs/design.md, section 3)."""

from .catalog import Catalog, InvalidSIDError, sid_str
from .world import Queries, World, spearman_rows

__all__ = ["Catalog", "InvalidSIDError", "Queries", "World", "sid_str", "spearman_rows"]
