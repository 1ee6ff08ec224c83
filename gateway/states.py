"""A task's states, named once: the proto's `TaskState` enum, for Python and for Lua.

The Lua scripts that decide exactly-once (gateway/batches.py) compare states by name, never by
number: `LUA_STATES` is generated here from the generated proto module, so reordering or
renumbering `TaskState` in the proto changes the scripts with it instead of silently breaking
them (tests/dispatch/test_batch_scripts.py checks the generated text against the enum).
"""

from __future__ import annotations

from imagemesh.v1 import imagemesh_pb2 as pb

FINAL = (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED)
# The batch counter each final state adds to (meta hash fields).
COUNTER = {pb.SUCCEEDED: "ok", pb.FAILED: "failed", pb.CANCELLED: "cancelled"}


def _lua_states() -> str:
    names = [(name, number) for name, number in pb.TaskState.items() if name != "TASK_STATE_UNSPECIFIED"]
    lines = [f"local {name} = {number}" for name, number in names]
    finals = " or ".join(f"st == {pb.TaskState.Name(s)}" for s in FINAL)
    counters = ", ".join(f"[{pb.TaskState.Name(s)}] = '{c}'" for s, c in COUNTER.items())
    lines.append(f"local function is_final(st) return {finals} end")
    lines.append(f"local COUNTER = {{{counters}}}")
    return "\n".join(lines) + "\n"


# Prepended to every script that reads or writes a task's state.
LUA_STATES = _lua_states()


def is_final(state: int) -> bool:
    return state in FINAL
