"""The schema registry: every message type has a schema, and the fast and reference validators agree."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcprt import protocol as P
from mcprt.protocol import AppError, Registry

REGISTRY = Registry()


def test_every_message_type_has_a_schema_and_every_schema_a_type():
    assert set(REGISTRY.schemas) == {"envelope", *P.INBOUND_TYPES, *P.REST_BODIES}


def test_schemas_carry_id_and_2020_12():
    for name, schema in REGISTRY.schemas.items():
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"].endswith(f"/{name}.json")


def _verdict(validate, instance) -> bool:
    try:
        validate(instance)
        return True
    except Exception:  # each library raises its own exception type
        return False


values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 300) | st.floats(-2, 2, allow_nan=False)
    | st.text(alphabet=st.sampled_from("ab<\u0000\n é"), max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["position", "insert", "delete", "content", "base_revision", "user_id", "cursor_position",
                         "operation", "change_delta", "since_revision", "selection_end", "client_info",
                         "activate", "document_id", "format", "revision", "id", "type", "payload",
                         "timestamp", "x"]), inner, max_size=4),
    max_leaves=8)
deltas = st.fixed_dictionaries({"position": st.integers(-1, 5)},
                               optional={"insert": st.text(max_size=3) | st.integers(), "delete": st.integers(-1, 3)})
edits = st.fixed_dictionaries({}, optional={
    "change_delta": deltas | st.lists(deltas, max_size=3), "content": st.text(max_size=3),
    "base_revision": st.integers(-1, 3), "user_id": st.text(max_size=2), "cursor_position": st.integers(-1, 3)})


@pytest.mark.parametrize("name", sorted(REGISTRY.schemas))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instance=values | edits)
def test_fast_and_reference_validators_agree(name, instance):
    fast = _verdict(REGISTRY._fast[name], instance)
    reference = _verdict(REGISTRY._validators[name].validate, instance)
    assert fast == reference, (name, instance)


def test_rejections_name_the_pointer():
    with pytest.raises(AppError) as caught:
        REGISTRY.parse(json.dumps({"id": "1", "type": "realtime_edit",
                                   "payload": {"change_delta": {"position": -1, "insert": "a"}}}))
    assert caught.value.details["pointer"].startswith("/payload/change_delta")
