"""The schema registry: every message type has a schema, and the fast and reference validators agree."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
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


_ops = st.lists(st.one_of(st.integers(-10**6, 10**6).filter(bool), st.text(min_size=1)), max_size=6)


@given(id_=st.text(min_size=1, max_size=128), revision=st.integers(0, 2**53 - 1), op=_ops,
       correction=st.one_of(st.none(), _ops), lean=st.booleans(), content=st.text(), ascii_op=st.booleans())
def test_the_hand_written_edit_ack_is_the_generic_one(id_, revision, op, correction, lean, content, ascii_op):
    stamp = "2026-12-05T08:00:00.000000Z"
    op_json = json.dumps(op) if ascii_op else P.dumps(op)  # stored ops are ASCII-escaped JSON
    text = P.edit_ack_text(id_, revision, op_json, P.dumps(correction) if correction is not None else None,
                           len(content) if lean else None, None if lean else content, stamp)
    payload = {"edit_id": id_, "revision": revision, "op": op, "correction": correction,
               **({"length": len(content)} if lean else {"content": content})}
    assert json.loads(text) == P.build(P.EDIT_ACK, payload, stamp, id_)
    if not ascii_op:
        assert text == P.dumps(P.build(P.EDIT_ACK, payload, stamp, id_))  # byte for byte, key order too


_scalars = st.none() | st.integers(0, 2**53 - 1) | st.floats(0, 2**53, allow_nan=False) | st.text(max_size=40) | st.booleans()


@given(id_=st.text(min_size=1, max_size=140), user_id=st.text(min_size=1, max_size=128),
       peer_id=st.none() | st.text(max_size=64), cursor=_scalars, operation=_scalars, op=_ops,
       revision=st.integers(1, 2**53 - 1), lean=st.booleans(), content=st.text(), ascii_op=st.booleans())
def test_the_hand_written_broadcast_is_the_generic_one(id_, user_id, peer_id, cursor, operation, op, revision, lean,
                                                       content, ascii_op):
    stamp = "2026-12-05T08:00:00.000000Z"
    delta = [{"position": 0, "insert": content}]
    op_json = json.dumps(op) if ascii_op else P.dumps(op)  # stored ops are ASCII-escaped JSON
    text = P.realtime_edit_text(id_, user_id, peer_id, cursor, operation, op_json, revision,
                                len(content) if lean else None, None if lean else content,
                                None if lean else P.dumps(delta), stamp)
    body = {"cursor_position": cursor, "user_id": user_id, "operation": operation, "op": op, "revision": revision,
            "base_revision": revision - 1, **({"length": len(content)} if lean else
                                               {"content": content, "change_delta": delta})}
    generic = P.build(P.REALTIME_EDIT, body, stamp, id_,
                      session_info={"user_id": user_id, "peer_id": peer_id, "timestamp": stamp})
    assert json.loads(text) == generic
    if not ascii_op:
        assert text == P.dumps(generic)  # byte for byte, key order too


stamps = st.sampled_from(["2026-12-05T08:00:00Z", "2026-12-05 08:00:00.123456789+01:00", "2026-12-05T08:00:00Z\n",
                          "2026-12-05T08:00:00", "", "x" * 70]) | st.none() | st.integers()
envelopes = st.fixed_dictionaries(
    {"id": st.text(max_size=3) | st.integers() | st.sampled_from(["e1", "x" * 129]),
     "type": st.sampled_from([P.REALTIME_EDIT, P.HEARTBEAT]), "payload": edits | values},
    optional={"timestamp": stamps, "x": values})


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=envelopes | values)
def test_a_plain_edit_is_one_both_schemas_accept(message):
    if P.plain_edit(message):
        for validate in (REGISTRY._fast, {n: v.validate for n, v in REGISTRY._validators.items()}):
            assert _verdict(validate["envelope"], message), message
            assert _verdict(validate[P.REALTIME_EDIT], message["payload"]), message


@given(id_=st.text(min_size=1, max_size=128), position=st.integers(0, 2**53 - 1), insert=st.text(max_size=50),
       delete=st.one_of(st.none(), st.integers(1, 2**53 - 1)), base=st.one_of(st.none(), st.integers(0, 99)))
def test_the_usual_edits_are_plain(id_, position, insert, delete, base):
    delta = {"position": position, "insert": insert, **({"delete": delete} if delete else {})}
    payload = {"change_delta": delta, **({"base_revision": base} if base is not None else {})}
    message = {"id": id_, "type": P.REALTIME_EDIT, "payload": payload, "timestamp": "2026-12-05T08:00:00.5Z"}
    assert P.plain_edit(message)
    assert P.plain_edit({"id": id_, "type": P.REALTIME_EDIT, "payload": {"content": insert}})


_PLACES = [("id",), ("type",), ("payload",), ("timestamp",), ("x",), ("payload", "change_delta"),
           *[("payload", k) for k in ("content", "cursor_position", "base_revision", "user_id", "operation", "x")],
           *[("payload", "change_delta", k) for k in ("position", "insert", "delete", "x")]]
spoilers = (values | stamps | st.text(max_size=3) | st.sampled_from(["", "x" * 33, "x" * 129, "x" * 10241])
            | st.integers(-2, 2) | st.sampled_from([2**53 - 1, 2**53, True, False, 1.0]))


_BOUNDARIES = [(("id",), ""), (("id",), "x" * 129), (("type",), P.HEARTBEAT), (("payload",), []),
               (("timestamp",), "2026-12-05T08:00:00Z\n"), (("timestamp",), None), (("x",), 1),
               (("payload", "change_delta"), None), (("payload", "change_delta"), []), (("payload", "content"), None),
               (("payload", "cursor_position"), True), (("payload", "cursor_position"), -1),
               (("payload", "base_revision"), 2**53), (("payload", "base_revision"), 1.0),
               (("payload", "user_id"), ""), (("payload", "user_id"), "x" * 129), (("payload", "operation"), ""),
               (("payload", "operation"), "x" * 33), (("payload", "x"), 1),
               (("payload", "change_delta", "position"), -1), (("payload", "change_delta", "insert"), "x" * 10241),
               (("payload", "change_delta", "insert"), 5), (("payload", "change_delta", "delete"), 0),
               (("payload", "change_delta", "delete"), False), (("payload", "change_delta", "x"), 1)]


def _spoil_examples(test):
    for place, value in _BOUNDARIES:
        test = example(places=[place], value=value, drop=False)(test)
    return test


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(places=st.lists(st.sampled_from(_PLACES), min_size=1, max_size=2), value=spoilers, drop=st.booleans())
@_spoil_examples
def test_a_plain_edit_spoiled_in_one_place_is_plain_only_if_still_valid(places, value, drop):
    message = {"id": "e1", "type": P.REALTIME_EDIT, "timestamp": "2026-12-05T08:00:00Z",
               "payload": {"change_delta": {"position": 0, "insert": "a"}, "base_revision": 1}}
    for place in places:
        target = message
        for key in place[:-1]:
            target = target.get(key) if isinstance(target, dict) else None
        if isinstance(target, dict):
            if drop:
                target.pop(place[-1], None)
            else:
                target[place[-1]] = value
    if P.plain_edit(message):
        for validate in (REGISTRY._fast, {n: v.validate for n, v in REGISTRY._validators.items()}):
            assert _verdict(validate["envelope"], message), message
            assert _verdict(validate[P.REALTIME_EDIT], message["payload"]), message
