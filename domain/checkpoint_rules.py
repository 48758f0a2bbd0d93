"""Which checkpoint a VM gets: the type rules and the per-VM limit, as pure functions.

Terms:
- *setting*: the VM's checkpoint type (Set-VM -CheckpointType): standard,
  production, production-only or disabled.
- *override*: ``checkpoint create --type``, the type asked for one checkpoint.
  Checkpoint-VM has no such parameter; ours may only ask for what the setting
  allows (``requested_type``).
- *requested*: the type the checkpoint is asked to be, after the override.
- *effective*: what it is, standard or production, after any *fallback*: a
  production request becomes standard when the guest cannot quiesce (VSS /
  fsfreeze) or when the configuration version has no production checkpoints.

Microsoft's sources (docs/decisions/0001 records the choices):
- production checkpoints need configuration version 6.2 or later ("Upgrade
  virtual machine version in Hyper-V on Windows or Windows Server", the
  feature/version table): a 5.0 VM takes standard ones;
- production-only exists so that a guest never gets a standard checkpoint
  ("Choose between standard or production checkpoints in Hyper-V");
- at most 50 checkpoints per VM ("Plan for Hyper-V scalability in Windows
  Server": "the actual number may be lower, depending on the available storage").
"""

from __future__ import annotations

from .errors import InvalidValue, NotAllowed
from .state_files import parse_version
from .values import CheckpointType, VMState

MAX_CHECKPOINTS = 50  # Hyper-V's documented maximum per VM
LIMIT_SOURCE = '"Plan for Hyper-V scalability in Windows Server"'
PRODUCTION_SINCE = (6, 2)  # the first configuration version with production checkpoints


def has_production(version: str) -> bool:
    """Whether a VM at configuration ``version`` can take production checkpoints."""
    return parse_version(version) >= PRODUCTION_SINCE


def default_type(version: str) -> CheckpointType:
    """A new VM's setting: production, Hyper-V's default since 2016; standard on 5.0."""
    return CheckpointType.PRODUCTION if has_production(version) else CheckpointType.STANDARD


def check_setting(vm: str, setting: CheckpointType, version: str) -> None:
    """Refuse production-only on a version without production checkpoints: every
    checkpoint would fail. Production there is kept: it falls back to standard."""
    if setting is CheckpointType.PRODUCTION_ONLY and not has_production(version):
        raise NotAllowed(
            f"VM {vm!r} is at configuration version {version}, which has no production "
            "checkpoints (they need 6.2 or later): production-only would refuse every "
            "checkpoint; choose standard or production (which takes standard ones there)"
        )


def requested_type(
    vm: str, setting: CheckpointType, override: CheckpointType | None
) -> CheckpointType:
    """The type a checkpoint is asked to be: the setting, or the override within it.

    Disabled refuses everything; production-only refuses ``--type standard`` and
    turns ``--type production`` into production-only (it never falls back); any
    other setting takes the override as given.
    """
    if setting is CheckpointType.DISABLED:
        raise NotAllowed(f"checkpoints are disabled for VM {vm!r}")
    if override is CheckpointType.DISABLED:
        raise InvalidValue("'disabled' is a VM setting, not a type of checkpoint")
    if override is None:
        return setting
    if setting is CheckpointType.PRODUCTION_ONLY:
        if override is CheckpointType.STANDARD:
            raise NotAllowed(
                f"VM {vm!r} is set to production-only checkpoints, so that its guest never "
                "gets a standard checkpoint (e.g. a domain controller); --type standard "
                "refused (change the setting with `ckpt vm set --checkpoint-type`)"
            )
        return CheckpointType.PRODUCTION_ONLY
    return override


def quiesce_problem(state: VMState, guest_can_quiesce: bool) -> str | None:
    """Why the guest cannot give a production checkpoint now, or None if it can.

    An off VM's disks are consistent already; a running guest quiesces unless
    told it cannot; a saved or paused guest runs no code, so nothing in it can
    freeze its file systems (our reading; docs/decisions/0001).
    """
    if state is VMState.OFF or (state is VMState.RUNNING and guest_can_quiesce):
        return None
    if state is VMState.RUNNING:
        return "the guest could not quiesce"
    return f"the VM is {state.value}, so its guest cannot quiesce"


def production_fallback(version: str, state: VMState, guest_can_quiesce: bool) -> str | None:
    """Why a production request becomes a standard checkpoint, or None if it does not."""
    if not has_production(version):
        return f"configuration {version} has no production checkpoints"
    return quiesce_problem(state, guest_can_quiesce)


def effective_type(
    vm: str, requested: CheckpointType, version: str, state: VMState, guest_can_quiesce: bool
) -> tuple[CheckpointType, str]:
    """The checkpoint's type and, when it fell back to standard, why ("" if not)."""
    if requested is CheckpointType.STANDARD:
        return CheckpointType.STANDARD, ""
    why = production_fallback(version, state, guest_can_quiesce)
    if why is None:
        return CheckpointType.PRODUCTION, ""
    if requested is CheckpointType.PRODUCTION_ONLY:
        if not has_production(version):
            raise NotAllowed(
                f"production checkpoint of VM {vm!r} refused: configuration version "
                f"{version} has no production checkpoints (they need 6.2 or later), and "
                "the checkpoint type is production-only (no fallback to standard)"
            )
        raise NotAllowed(
            f"production checkpoint of VM {vm!r} failed: {why}, and the checkpoint type "
            "is production-only (no fallback to standard)"
        )
    return CheckpointType.STANDARD, why


def check_limit(vm: str, count: int) -> None:
    """Refuse a checkpoint beyond Hyper-V's 50 per VM (``count``: live checkpoints now)."""
    if count >= MAX_CHECKPOINTS:
        raise NotAllowed(
            f"VM {vm!r} has {count} checkpoints, Hyper-V's limit of {MAX_CHECKPOINTS} per VM "
            f"({LIMIT_SOURCE}); delete one first (ckpt checkpoint delete)"
        )
