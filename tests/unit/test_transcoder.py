"""The msgpack transcoder and zstd compressor round-trip every value exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from ckpt.domain import (
    VALUE_TYPES,
    Checkpoint,
    CheckpointType,
    Layer,
    StateFile,
    StateFileKind,
    StoreCorrupt,
    VMState,
)
from ckpt.storage import MsgPackTranscoder, ZstdCompressor

codec = MsgPackTranscoder(VALUE_TYPES)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.uuids(),
    st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5))])),
    st.sampled_from(list(VMState) + list(CheckpointType)),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.one_of(st.text(max_size=5), st.uuids()), inner, max_size=4),
    ),
    max_leaves=12,
)


@given(values)
def test_any_value_round_trips_with_its_exact_type(value: Any) -> None:
    back = codec.decode(codec.encode({"v": value}))["v"]
    assert back == value  # aware datetimes compare as instants: UTC or not
    assert type(back) is type(value)


def test_datetimes_come_back_as_the_same_instant_in_utc() -> None:
    local = datetime(2026, 11, 26, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=-5)))
    back = codec.decode(codec.encode({"t": local}))["t"]
    assert back == local and back.tzinfo == UTC and back.hour == 14
    with pytest.raises(TypeError, match="naive datetime"):
        codec.encode({"t": datetime(2026, 1, 1)})


def test_domain_values_round_trip() -> None:
    cp = Checkpoint(
        id=UUID(int=1),
        name="one",
        parent=None,
        created_at=datetime(2026, 11, 26, 14, 0, tzinfo=UTC),
        type=CheckpointType.PRODUCTION,
        vm_state=VMState.OFF,
        config_version="9.0",
        layers=(("Disk0", UUID(int=2)),),
        state_files=(StateFile("Snapshots/X.vmcx", StateFileKind.VMCX, False),),
        automatic=False,
    )
    layers = {UUID(int=2): Layer(UUID(int=2), "Disk0", "Disk0.vhdx", None)}
    back = codec.decode(codec.encode({"cp": cp, "layers": layers}))
    assert back == {"cp": cp, "layers": layers}
    assert isinstance(back["cp"].layers, tuple)


def test_unregistered_type_is_refused_on_encode() -> None:
    class Foreign:
        pass

    with pytest.raises(TypeError, match="register it"):
        codec.encode({"x": Foreign()})


def test_unknown_value_type_name_is_store_corrupt() -> None:
    other = MsgPackTranscoder([VMState])
    data = other.encode({"s": VMState.OFF})
    with pytest.raises(StoreCorrupt, match="unknown value type 'VMState'"):
        MsgPackTranscoder().decode(data)


def test_garbage_is_store_corrupt() -> None:
    with pytest.raises(StoreCorrupt, match="cannot decode"):
        codec.decode(b"\xc1\xc1\xc1")


def test_compressor_round_trip_and_bounds() -> None:
    z = ZstdCompressor()
    data = codec.encode({"name": "x" * 1000})
    packed = z.compress(data)
    assert len(packed) < len(data)
    assert z.decompress(packed) == data
    with pytest.raises(StoreCorrupt, match="not a zstd frame"):
        z.decompress(b"plain bytes")
    huge = zstandard.ZstdCompressor().compress(b"\0" * (17 * 1024 * 1024))
    with pytest.raises(StoreCorrupt, match="limit"):
        z.decompress(huge)
