from imagemesh.v1 import imagemesh_pb2 as _imagemesh_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkerHello(_message.Message):
    __slots__ = ("worker_id", "pool", "capacity", "version", "device", "providers")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    pool: str
    capacity: int
    version: str
    device: str
    providers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, worker_id: _Optional[str] = ..., pool: _Optional[str] = ..., capacity: _Optional[int] = ..., version: _Optional[str] = ..., device: _Optional[str] = ..., providers: _Optional[_Iterable[str]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("in_flight", "sent_unix_ms")
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    SENT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    in_flight: int
    sent_unix_ms: int
    def __init__(self, in_flight: _Optional[int] = ..., sent_unix_ms: _Optional[int] = ...) -> None: ...

class UploadTarget(_message.Message):
    __slots__ = ("object", "put_url", "max_bytes")
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    PUT_URL_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    object: str
    put_url: str
    max_bytes: int
    def __init__(self, object: _Optional[str] = ..., put_url: _Optional[str] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class InputSource(_message.Message):
    __slots__ = ("object", "get_url")
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    GET_URL_FIELD_NUMBER: _ClassVar[int]
    object: str
    get_url: str
    def __init__(self, object: _Optional[str] = ..., get_url: _Optional[str] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("attempt_id", "task_id", "attempt", "fence", "budget_ms", "output_filename", "provider", "token", "generate", "enhance", "inputs", "trace_context", "uploads", "sources", "storage_token", "inline_max_bytes")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ATTEMPT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FILENAME_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    GENERATE_FIELD_NUMBER: _ClassVar[int]
    ENHANCE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    UPLOADS_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    STORAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INLINE_MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    attempt_id: str
    task_id: str
    attempt: int
    fence: int
    budget_ms: int
    output_filename: str
    provider: str
    token: str
    generate: _imagemesh_pb2.GenerateSpec
    enhance: _imagemesh_pb2.EnhanceSpec
    inputs: _containers.RepeatedCompositeFieldContainer[_imagemesh_pb2.OutputFile]
    trace_context: _containers.ScalarMap[str, str]
    uploads: _containers.RepeatedCompositeFieldContainer[UploadTarget]
    sources: _containers.RepeatedCompositeFieldContainer[InputSource]
    storage_token: str
    inline_max_bytes: int
    def __init__(self, attempt_id: _Optional[str] = ..., task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., fence: _Optional[int] = ..., budget_ms: _Optional[int] = ..., output_filename: _Optional[str] = ..., provider: _Optional[str] = ..., token: _Optional[str] = ..., generate: _Optional[_Union[_imagemesh_pb2.GenerateSpec, _Mapping]] = ..., enhance: _Optional[_Union[_imagemesh_pb2.EnhanceSpec, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[_imagemesh_pb2.OutputFile, _Mapping]]] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., uploads: _Optional[_Iterable[_Union[UploadTarget, _Mapping]]] = ..., sources: _Optional[_Iterable[_Union[InputSource, _Mapping]]] = ..., storage_token: _Optional[str] = ..., inline_max_bytes: _Optional[int] = ...) -> None: ...

class AttemptResult(_message.Message):
    __slots__ = ("attempt_id", "task_id", "attempt", "fence", "state", "files", "error", "provider", "tries", "run_ms", "model", "device", "fallback_ok")
    ATTEMPT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    TRIES_FIELD_NUMBER: _ClassVar[int]
    RUN_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_OK_FIELD_NUMBER: _ClassVar[int]
    attempt_id: str
    task_id: str
    attempt: int
    fence: int
    state: _imagemesh_pb2.TaskState
    files: _containers.RepeatedCompositeFieldContainer[_imagemesh_pb2.OutputFile]
    error: _imagemesh_pb2.TaskError
    provider: str
    tries: int
    run_ms: int
    model: str
    device: str
    fallback_ok: bool
    def __init__(self, attempt_id: _Optional[str] = ..., task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., fence: _Optional[int] = ..., state: _Optional[_Union[_imagemesh_pb2.TaskState, str]] = ..., files: _Optional[_Iterable[_Union[_imagemesh_pb2.OutputFile, _Mapping]]] = ..., error: _Optional[_Union[_imagemesh_pb2.TaskError, _Mapping]] = ..., provider: _Optional[str] = ..., tries: _Optional[int] = ..., run_ms: _Optional[int] = ..., model: _Optional[str] = ..., device: _Optional[str] = ..., fallback_ok: _Optional[bool] = ...) -> None: ...

class WorkerMessage(_message.Message):
    __slots__ = ("hello", "credits", "results", "heartbeat", "draining", "returned")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    RETURNED_FIELD_NUMBER: _ClassVar[int]
    hello: WorkerHello
    credits: int
    results: _containers.RepeatedCompositeFieldContainer[AttemptResult]
    heartbeat: Heartbeat
    draining: bool
    returned: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, hello: _Optional[_Union[WorkerHello, _Mapping]] = ..., credits: _Optional[int] = ..., results: _Optional[_Iterable[_Union[AttemptResult, _Mapping]]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., draining: _Optional[bool] = ..., returned: _Optional[_Iterable[str]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("gateway_id", "heartbeat_interval_ms")
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    heartbeat_interval_ms: int
    def __init__(self, gateway_id: _Optional[str] = ..., heartbeat_interval_ms: _Optional[int] = ...) -> None: ...

class GatewayMessage(_message.Message):
    __slots__ = ("welcome", "assignments", "cancels", "goaway")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    CANCELS_FIELD_NUMBER: _ClassVar[int]
    GOAWAY_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    assignments: _containers.RepeatedCompositeFieldContainer[Assignment]
    cancels: _containers.RepeatedScalarFieldContainer[str]
    goaway: bool
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., assignments: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ..., cancels: _Optional[_Iterable[str]] = ..., goaway: _Optional[bool] = ...) -> None: ...

class PutObjectHeader(_message.Message):
    __slots__ = ("object", "token", "content_type")
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    object: str
    token: str
    content_type: str
    def __init__(self, object: _Optional[str] = ..., token: _Optional[str] = ..., content_type: _Optional[str] = ...) -> None: ...

class PutObjectRequest(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: PutObjectHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[PutObjectHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PutObjectReply(_message.Message):
    __slots__ = ("object", "size_bytes")
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    object: str
    size_bytes: int
    def __init__(self, object: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class GetObjectRequest(_message.Message):
    __slots__ = ("object", "token")
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    object: str
    token: str
    def __init__(self, object: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class ObjectData(_message.Message):
    __slots__ = ("data", "size_bytes")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    size_bytes: int
    def __init__(self, data: _Optional[bytes] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class SmallObject(_message.Message):
    __slots__ = ("id", "object", "token", "content_type", "data")
    ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    id: int
    object: str
    token: str
    content_type: str
    data: bytes
    def __init__(self, id: _Optional[int] = ..., object: _Optional[str] = ..., token: _Optional[str] = ..., content_type: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class PutSmallObjectsRequest(_message.Message):
    __slots__ = ("objects",)
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[SmallObject]
    def __init__(self, objects: _Optional[_Iterable[_Union[SmallObject, _Mapping]]] = ...) -> None: ...

class ObjectReceipt(_message.Message):
    __slots__ = ("id", "size_bytes", "error_code", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: int
    size_bytes: int
    error_code: str
    error: str
    def __init__(self, id: _Optional[int] = ..., size_bytes: _Optional[int] = ..., error_code: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class PutSmallObjectsReply(_message.Message):
    __slots__ = ("receipts",)
    RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    receipts: _containers.RepeatedCompositeFieldContainer[ObjectReceipt]
    def __init__(self, receipts: _Optional[_Iterable[_Union[ObjectReceipt, _Mapping]]] = ...) -> None: ...
