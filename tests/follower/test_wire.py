"""Stored events relayed as bytes: `encode_event` builds the serialized BatchEvent from the stored
fields without parsing the payload, and it is the very message the old parse-and-reserialise
path produced, byte for byte."""

from __future__ import annotations

import grpc
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.batches import decode_event, encode_event, event_head
from imagemesh.v1 import imagemesh_pb2 as pb
from tests.follower.conftest import METADATA, finish, new_batch, ref

int32 = st.integers(-2**31, 2**31 - 1)
int64 = st.integers(-2**63, 2**63 - 1)
text = st.text(max_size=12)

files = st.builds(
    lambda name, loc, ctype, w, h, exp, obj, size: pb.OutputFile(
        filename=name, content_type=ctype, width=w, height=h, url_expires_at_ms=exp, object=obj, size_bytes=size,
        **({"url": loc} if isinstance(loc, str) else {"data": loc} if isinstance(loc, bytes) else {})),
    text, st.one_of(st.none(), text, st.binary(max_size=40)), text, int32, int32, int64, text, int64)
results = st.builds(
    lambda i, tid, fn, state, fs, err, provider, att, timings, labels, dd, model, device: pb.TaskResult(
        task_index=i, task_id=tid, output_filename=fn, state=state, files=fs, error=err, provider=provider,
        attempts=att, timings=timings, labels=labels, deduplicated=dd, model=model, device=device),
    int32, text, text, st.sampled_from(list(pb.TaskState.values())), st.lists(files, max_size=3),
    st.one_of(st.none(), st.builds(pb.TaskError, code=text, message=text, retryable=st.booleans())),
    text, int32, st.one_of(st.none(), st.builds(pb.Timings, queued_ms=int64, lease_wait_ms=int64, run_ms=int64,
                                                total_ms=int64)),
    st.dictionaries(text, text, max_size=4), st.booleans(), text, text)
payloads = st.one_of(
    st.tuples(st.just(b"result"), results),
    st.tuples(st.just(b"accepted"), st.builds(pb.Accepted, batch_id=text, task_ids=st.lists(text, max_size=5))),
    st.tuples(st.just(b"task_accepted"), st.builds(pb.TaskAccepted, task_index=int32, task_id=text)))
summaries = st.fixed_dictionaries({b"total": int32, b"ok": int32, b"failed": int32, b"cancelled": int32,
                                   b"duration_ms": int64})
cursors = st.builds(lambda ms, seq: f"{ms}-{seq}", st.integers(0, 2**48), st.integers(0, 2**20))
batch_ids = st.text(min_size=1, max_size=40)


def stored(kind_and_message, deterministic: bool) -> dict[bytes, bytes]:
    """The fields an event is stored with (see gateway.batches: XADD k, d)."""
    kind, message = kind_and_message
    return {b"k": kind, b"d": message.SerializeToString(deterministic=deterministic)}


@settings(max_examples=400, deadline=None)
@given(batch_ids, cursors, st.one_of(payloads, summaries))
def test_an_encoded_event_is_the_parsed_and_reserialised_event_byte_for_byte(batch_id, cursor, event):
    if isinstance(event, dict):
        fields = {b"k": b"summary", **{k: str(v).encode() for k, v in event.items()}}
    else:
        fields = stored(event, deterministic=True)
    raw = encode_event(event_head(batch_id), cursor.encode(), fields)
    parsed = decode_event(batch_id, cursor, fields)
    # Deterministic on both sides: map entries (labels) are the only thing a parse may reorder.
    assert raw == parsed.SerializeToString(deterministic=True)
    if not isinstance(event, dict) and len(getattr(event[1], "labels", ())) <= 1:
        assert raw == parsed.SerializeToString()


@settings(max_examples=200, deadline=None)
@given(batch_ids, cursors, payloads)
def test_an_encoded_event_parses_to_the_same_message_whatever_the_payloads_map_order(batch_id, cursor, event):
    fields = stored(event, deterministic=False)  # as the dispatcher writes them
    raw = encode_event(event_head(batch_id), cursor.encode(), fields)
    assert pb.BatchEvent.FromString(raw) == decode_event(batch_id, cursor, fields)


async def test_an_unknown_kind_is_an_event_without_a_payload_as_before():
    fields = {b"k": b"something-new", b"d": b"\x08\x01"}
    assert encode_event(event_head("b1"), b"1-0", fields) == decode_event("b1", "1-0", fields).SerializeToString()


async def test_the_gateway_sends_the_stored_events_bytes_unchanged(mesh_factory, redis, store):
    """A client reading WatchBatch as raw bytes (no deserializer) gets, for every event of a
    real batch (accepted, results of every state, cancelled ones, the summary), exactly the
    bytes of the event parsed from the log and serialised."""
    m = mesh_factory()
    braw = ref("braw")  # the mesh's name of this tenant's batch "braw"
    await new_batch(store, braw, 4)
    await finish(store, braw, 0, data=b"\x89PNG" + bytes(300))
    await store.finish_many([(braw, 1, "*", pb.TaskResult(task_index=1, task_id=f"{braw}-1", state=pb.FAILED,
                                                           error=pb.TaskError(code="X", message="no")), False)])
    await store.cancel(braw)
    m.start_gateway()
    log = await redis.xrange(f"im:{{{braw}}}:ev")
    expected = [decode_event("braw", raw_id.decode(), fields).SerializeToString() for raw_id, fields in log]
    async with grpc.aio.insecure_channel(m.address) as channel:
        call = channel.unary_stream("/imagemesh.v1.ImageMesh/WatchBatch",
                                    request_serializer=pb.WatchBatchRequest.SerializeToString,
                                    response_deserializer=None)
        got = [raw async for raw in call(pb.WatchBatchRequest(batch_id="braw"), metadata=METADATA)]
    assert got == expected
    kinds = [pb.BatchEvent.FromString(raw).WhichOneof("event") for raw in got]
    assert kinds == ["accepted", "result", "result", "result", "result", "summary"]
