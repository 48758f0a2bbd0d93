"""ckpt.projections: read models folded from the event log or a VM's state."""

from .audit import OPERATIONS, AuditEntry, AuditTrail, JsonValue, describe_changes
from .chain import ChainEntry, disk_chains
from .tree import TreeEntry, tree_entries

__all__ = [
    "OPERATIONS",
    "AuditEntry",
    "AuditTrail",
    "ChainEntry",
    "JsonValue",
    "TreeEntry",
    "describe_changes",
    "disk_chains",
    "tree_entries",
]
