"""ckpt.storage.hyperv_config: Hyper-V configuration files, on streams.

A configuration file describes a VM (``Virtual Machines/<GUID>.vmcx`` or
``.xml``) or one checkpoint of it (``Snapshots/<GUID>.vmcx`` or ``.xml``):
its name, id, parent, creation time, type, the disk files it points to and
its state files. Two generations:

    vmcx        2016+ (configuration version 6.2 and later): Microsoft's binary
                key-value file, undocumented; read and written by our own code
                (sources and layout in docs/vmcx.md)
    xml_config  2012 R2 (configuration version 5.0): an XML document

Both read into, and write from, one value type: ``model.Configuration``.
"""

from .model import CheckpointKind, Configuration, ConfiguredDisk, FileKind

__all__ = ["CheckpointKind", "Configuration", "ConfiguredDisk", "FileKind"]
