"""Tasks files: the JSON a person writes for `imagemesh submit`, read into `imagemesh.v1.Task`s.

A tasks file is a JSON list of tasks, or an object
`{"tasks": [...], "credentials": {"replicate": "r8_..."}, "batch_id": "..."}`. A task is the
short form

    {"prompt": "...", "output_filename": "fox.png", "model": "...", "providers": ["local"],
     "num_outputs": 1, "race": false, "input": {"seed": 1}, "inline_outputs": false,
     "labels": {...}, "idempotency_key": "...", "then_enhance": {"upscale": 2}}
    {"enhance": {"image_path": "face.jpg", "upscale": 2, "restore_faces": true}, "output_filename": "..."}

or the protobuf JSON form of `imagemesh.v1.Task` (`{"generate": {...}}` / `{"enhance": {...}}`).
`image_path` is read relative to the tasks file.

Every mistake raises `TasksFileError`, whose text is one line naming the file, the task index
and the field by its snake_case name, as the README writes it: `tasks.json: task 2:
generate.num_outputs: expected an integer, got "three"`. Shapes are checked here, field by field
against the message descriptors, before protobuf's parser sees the value, because the parser's
own messages name fields in camelCase and list what exists in camelCase too. Limits (prompt
length, number of outputs, ...) are the gateway's to check: it names the field and the limit.
Token values never appear in a message.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from pathlib import Path
from typing import Any, NamedTuple

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from imagemesh.v1 import imagemesh_pb2 as pb

# Short-form task keys that belong to `generate`.
SHORT_GENERATE = ("prompt", "model", "providers", "num_outputs", "race", "input", "inline_outputs")
FILE_FIELDS = ("tasks", "credentials", "batch_id")
MAX_FILE_BYTES = 256 * 1024 * 1024  # a tasks file with images inline can be large, not unbounded

_INTEGERS = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
             FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64,
             FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED32,
             FieldDescriptor.TYPE_SFIXED64}
_FLOATS = {FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE}
_INTEGER_TEXT = re.compile(r"-?[0-9]+\Z")


class TasksFileError(ValueError):
    """A tasks file that cannot be read or does not describe tasks; `str()` is one line."""

    def __init__(self, path: Path | str, problem: str, *, task: int | None = None, field: str = "") -> None:
        self.path, self.task, self.field, self.problem = str(path), task, field, problem
        where = [self.path] + ([f"task {task}"] if task is not None else []) + ([field] if field else [])
        super().__init__(": ".join([*where, problem]))


class TasksFile(NamedTuple):
    tasks: list[pb.Task]
    credentials: dict[str, str]
    batch_id: str


def load(path: Path | str) -> TasksFile:
    """Read and check a tasks file. Raises TasksFileError (never JSONDecodeError, OSError...)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise TasksFileError(path, f"{path.stat().st_size} bytes, the limit is {MAX_FILE_BYTES}")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TasksFileError(path, f"cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TasksFileError(path, "not UTF-8 text (a tasks file is JSON)") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TasksFileError(path, f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    if isinstance(doc, list):
        doc = {"tasks": doc}
    if not isinstance(doc, dict):
        raise TasksFileError(path, f"expected a list of tasks or an object with \"tasks\", got {_kind(doc)}")
    unknown = [k for k in doc if k not in FILE_FIELDS]
    if unknown:
        raise TasksFileError(path, f"unknown field (known: {', '.join(FILE_FIELDS)})", field=unknown[0])
    raw_tasks = doc.get("tasks")
    if not isinstance(raw_tasks, list):
        raise TasksFileError(path, f"expected a list of tasks, got {_kind(raw_tasks)}", field="tasks")
    if not raw_tasks:
        raise TasksFileError(path, "no tasks", field="tasks")
    credentials = doc.get("credentials", {})
    if not isinstance(credentials, dict):
        raise TasksFileError(path, f"expected an object of provider name to token, got {_kind(credentials)}",
                             field="credentials")
    for provider, token in credentials.items():
        if not isinstance(token, str):  # the value is a secret: say what it is, never show it
            raise TasksFileError(path, f"expected the token as a string, got {_kind(token, secret=True)}",
                                 field=f"credentials.{provider}")
    batch_id = doc.get("batch_id", "")
    if not isinstance(batch_id, str):
        raise TasksFileError(path, f"expected a string, got {_kind(batch_id)}", field="batch_id")
    tasks = []
    for i, raw in enumerate(raw_tasks):
        try:
            tasks.append(parse_task(raw, path.parent))
        except _FieldError as exc:
            raise TasksFileError(path, exc.problem, task=i, field=exc.field) from None
    return TasksFile(tasks, dict(credentials), batch_id)


def load_tasks(path: Path | str) -> tuple[list[pb.Task], dict[str, str], str]:
    """`load`, for callers that unpack (tasks, credentials, batch_id)."""
    return load(path)


class _FieldError(Exception):
    def __init__(self, field: str, problem: str) -> None:
        self.field, self.problem = field, problem


def parse_task(raw: Any, base: Path) -> pb.Task:
    """One task from its JSON form (short or protobuf). Raises _FieldError(field, problem),
    naming the field as the file wrote it (`num_outputs` in a short-form task, not
    `generate.num_outputs`)."""
    if not isinstance(raw, dict):
        raise _FieldError("", f"expected a task object, got {_kind(raw)}")
    short = "generate" not in raw and "enhance" not in raw
    try:
        return _parse_task(dict(raw), base)
    except _FieldError as exc:
        if short and exc.field.startswith("generate."):
            exc.field = exc.field.removeprefix("generate.")
        raise


def _parse_task(raw: dict[str, Any], base: Path) -> pb.Task:
    if "generate" not in raw and "enhance" not in raw:
        task_fields = {f.name: f for f in pb.Task.DESCRIPTOR.fields if f.name not in ("generate", "enhance")}
        task_fields.update({f.json_name: f for f in task_fields.values()})
        for key in raw:
            if key not in SHORT_GENERATE and key not in task_fields:
                known = [*SHORT_GENERATE, *(f.name for f in pb.Task.DESCRIPTOR.fields)]
                raise _FieldError(key, f"unknown field (known here: {', '.join(known)})")
        short = {k: raw.pop(k) for k in SHORT_GENERATE if k in raw}
        if "prompt" not in short:
            raise _FieldError("prompt", "missing (a task needs a prompt, or a generate or enhance object)")
        raw["generate"] = short
    else:
        mixed = [k for k in SHORT_GENERATE if k in raw]
        if mixed:
            raise _FieldError(mixed[0], "belongs inside \"generate\" (or leave out \"generate\" for the short form)")
        if "generate" in raw and "enhance" in raw:
            raise _FieldError("enhance", "a task is either generate or enhance, not both")
    enhance = raw.get("enhance")
    if isinstance(enhance, dict) and "image_path" in enhance:
        raw["enhance"] = _with_image(enhance, base)
    _check_shape(raw, pb.Task.DESCRIPTOR, "")
    try:
        return json_format.ParseDict(raw, pb.Task())
    except json_format.ParseError as exc:  # a case the shape check does not know: still one line
        raise _FieldError("", " ".join(str(exc).split())) from None


def _with_image(enhance: dict[str, Any], base: Path) -> dict[str, Any]:
    enhance = dict(enhance)
    image_path = enhance.pop("image_path")
    if not isinstance(image_path, str) or not image_path:
        raise _FieldError("enhance.image_path", f"expected a file path, got {_kind(image_path)}")
    if "image" in enhance or "image_url" in enhance:
        raise _FieldError("enhance.image_path", "give one of image_path, image or image_url")
    try:
        data = (base / image_path).read_bytes()
    except OSError as exc:
        raise _FieldError("enhance.image_path", f"cannot read {image_path}: {exc.strerror or exc}") from None
    enhance["image"] = base64.b64encode(data).decode()
    return enhance


def _check_shape(value: dict[str, Any], descriptor: Descriptor, where: str) -> None:
    by_json_name = {f.json_name: f for f in descriptor.fields}
    for key, item in value.items():
        field = descriptor.fields_by_name.get(key) or by_json_name.get(key)
        name = f"{where}.{key}" if where else key
        if field is None:
            known = ", ".join(f.name for f in descriptor.fields)
            raise _FieldError(name, f"unknown field (known here: {known})")
        name = f"{where}.{field.name}" if where else field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            _check_map(item, field, name)
        elif field.is_repeated:
            if not isinstance(item, list):
                raise _FieldError(name, f"expected a list, got {_kind(item)}")
            for n, element in enumerate(item):
                _check_value(element, field, f"{name}[{n}]")
        else:
            _check_value(item, field, name)


def _check_map(value: Any, field: FieldDescriptor, name: str) -> None:
    if not isinstance(value, dict):
        raise _FieldError(name, f"expected an object, got {_kind(value)}")
    value_field = field.message_type.fields_by_name["value"]
    for key, item in value.items():
        _check_value(item, value_field, f"{name}.{key}")


def _check_value(value: Any, field: FieldDescriptor, name: str) -> None:
    if field.message_type is not None:
        if field.message_type.full_name == "google.protobuf.Struct":
            if not isinstance(value, dict):
                raise _FieldError(name, f"expected an object, got {_kind(value)}")
            return  # model inputs: any JSON values, passed to the provider as they are
        if not isinstance(value, dict):
            raise _FieldError(name, f"expected an object, got {_kind(value)}")
        _check_shape(value, field.message_type, name)
    elif field.type == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            raise _FieldError(name, f"expected true or false, got {_kind(value)}")
    elif field.type in _INTEGERS:
        # protobuf's JSON form also takes integers written as strings ("3")
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())
                                           or (isinstance(value, str) and _INTEGER_TEXT.match(value))):
            raise _FieldError(name, f"expected an integer, got {_kind(value)}")
    elif field.type in _FLOATS:
        if isinstance(value, bool) or not (isinstance(value, (int, float)) or _is_number_text(value)):
            raise _FieldError(name, f"expected a number, got {_kind(value)}")
    elif field.type == FieldDescriptor.TYPE_STRING:
        if not isinstance(value, str):
            raise _FieldError(name, f"expected a string, got {_kind(value)}")
    elif field.type == FieldDescriptor.TYPE_BYTES:
        if not isinstance(value, str):
            raise _FieldError(name, f"expected base64 text, got {_kind(value)}")
        try:  # exactly what protobuf's parser will do with it
            base64.urlsafe_b64decode(value.encode() + b"=" * (4 - len(value.encode()) % 4))
        except (binascii.Error, ValueError):
            raise _FieldError(name, "expected base64 text (or use image_path)") from None
    elif field.type == FieldDescriptor.TYPE_ENUM:
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise _FieldError(name, f"expected one of {', '.join(v.name for v in field.enum_type.values)}")


def _is_number_text(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def _kind(value: Any, *, secret: bool = False) -> str:
    """What a JSON value is, for a message: the type, and short values themselves (not a
    secret's)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return "a number" if secret else f"the number {value}"
    if isinstance(value, str):
        if secret:
            return "a string"
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {json.dumps(shown)}"
    if isinstance(value, list):
        return "a list"
    return "an object"
