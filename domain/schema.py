"""The persisted schema: every event class the log may hold, in one list.

Stored events name their class by an explicit topic (``TOPIC``), so moving a
class never orphans them; changing one's fields needs a new ``class_version``
and an upcast. The VM's own events are nested in ``VirtualMachine``; the
retention events live in ``purges.py``.
"""

from __future__ import annotations

from eventsourcing.domain import Aggregate

from .imports import HyperVFolderImported
from .purges import ContentPurged, PurgeReclaimed, PurgeWithdrawn, RetentionPolicySet
from .vm import VirtualMachine

EVENT_CLASSES: tuple[type[Aggregate.Event], ...] = (
    VirtualMachine.Registered,
    VirtualMachine.SettingsChanged,
    VirtualMachine.StateChanged,
    VirtualMachine.CheckpointCreated,
    VirtualMachine.CheckpointApplied,
    VirtualMachine.CheckpointReverted,
    VirtualMachine.CheckpointRenamed,
    VirtualMachine.CheckpointDeleted,
    VirtualMachine.CheckpointExported,
    VirtualMachine.LayerContentRecorded,
    VirtualMachine.StateContentRecorded,
    VirtualMachine.BackupPointRecorded,
    VirtualMachine.Removed,
    ContentPurged,
    PurgeWithdrawn,
    PurgeReclaimed,
    RetentionPolicySet,
    HyperVFolderImported,
)
"""Every persisted event class: the schema. Change one only with a new class_version."""
