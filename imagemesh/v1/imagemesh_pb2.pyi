from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATE_UNSPECIFIED: _ClassVar[TaskState]
    QUEUED: _ClassVar[TaskState]
    RUNNING: _ClassVar[TaskState]
    SUCCEEDED: _ClassVar[TaskState]
    FAILED: _ClassVar[TaskState]
    CANCELLED: _ClassVar[TaskState]
TASK_STATE_UNSPECIFIED: TaskState
QUEUED: TaskState
RUNNING: TaskState
SUCCEEDED: TaskState
FAILED: TaskState
CANCELLED: TaskState

class GenerateSpec(_message.Message):
    __slots__ = ("prompt", "model", "providers", "race", "num_outputs", "input", "inline_outputs")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    RACE_FIELD_NUMBER: _ClassVar[int]
    NUM_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    INLINE_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    model: str
    providers: _containers.RepeatedScalarFieldContainer[str]
    race: bool
    num_outputs: int
    input: _struct_pb2.Struct
    inline_outputs: bool
    def __init__(self, prompt: _Optional[str] = ..., model: _Optional[str] = ..., providers: _Optional[_Iterable[str]] = ..., race: _Optional[bool] = ..., num_outputs: _Optional[int] = ..., input: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., inline_outputs: _Optional[bool] = ...) -> None: ...

class EnhanceSpec(_message.Message):
    __slots__ = ("image", "image_url", "image_object", "upscale", "restore_faces", "fidelity", "only_center_face", "output_format")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_URL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_OBJECT_FIELD_NUMBER: _ClassVar[int]
    UPSCALE_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FACES_FIELD_NUMBER: _ClassVar[int]
    FIDELITY_FIELD_NUMBER: _ClassVar[int]
    ONLY_CENTER_FACE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    image_url: str
    image_object: str
    upscale: int
    restore_faces: bool
    fidelity: float
    only_center_face: bool
    output_format: str
    def __init__(self, image: _Optional[bytes] = ..., image_url: _Optional[str] = ..., image_object: _Optional[str] = ..., upscale: _Optional[int] = ..., restore_faces: _Optional[bool] = ..., fidelity: _Optional[float] = ..., only_center_face: _Optional[bool] = ..., output_format: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("output_filename", "idempotency_key", "generate", "enhance", "then_enhance", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    OUTPUT_FILENAME_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    GENERATE_FIELD_NUMBER: _ClassVar[int]
    ENHANCE_FIELD_NUMBER: _ClassVar[int]
    THEN_ENHANCE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    output_filename: str
    idempotency_key: str
    generate: GenerateSpec
    enhance: EnhanceSpec
    then_enhance: EnhanceSpec
    labels: _containers.ScalarMap[str, str]
    def __init__(self, output_filename: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., generate: _Optional[_Union[GenerateSpec, _Mapping]] = ..., enhance: _Optional[_Union[EnhanceSpec, _Mapping]] = ..., then_enhance: _Optional[_Union[EnhanceSpec, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class OutputFile(_message.Message):
    __slots__ = ("filename", "url", "data", "content_type", "width", "height", "url_expires_at_ms", "object", "size_bytes")
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    URL_EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    filename: str
    url: str
    data: bytes
    content_type: str
    width: int
    height: int
    url_expires_at_ms: int
    object: str
    size_bytes: int
    def __init__(self, filename: _Optional[str] = ..., url: _Optional[str] = ..., data: _Optional[bytes] = ..., content_type: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., url_expires_at_ms: _Optional[int] = ..., object: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class TaskError(_message.Message):
    __slots__ = ("code", "message", "retryable")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    retryable: bool
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., retryable: _Optional[bool] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queued_ms", "lease_wait_ms", "run_ms", "total_ms")
    QUEUED_MS_FIELD_NUMBER: _ClassVar[int]
    LEASE_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    RUN_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    queued_ms: int
    lease_wait_ms: int
    run_ms: int
    total_ms: int
    def __init__(self, queued_ms: _Optional[int] = ..., lease_wait_ms: _Optional[int] = ..., run_ms: _Optional[int] = ..., total_ms: _Optional[int] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("task_index", "task_id", "output_filename", "state", "files", "error", "provider", "attempts", "timings", "labels", "deduplicated", "model", "device")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_INDEX_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FILENAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DEDUPLICATED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    task_index: int
    task_id: str
    output_filename: str
    state: TaskState
    files: _containers.RepeatedCompositeFieldContainer[OutputFile]
    error: TaskError
    provider: str
    attempts: int
    timings: Timings
    labels: _containers.ScalarMap[str, str]
    deduplicated: bool
    model: str
    device: str
    def __init__(self, task_index: _Optional[int] = ..., task_id: _Optional[str] = ..., output_filename: _Optional[str] = ..., state: _Optional[_Union[TaskState, str]] = ..., files: _Optional[_Iterable[_Union[OutputFile, _Mapping]]] = ..., error: _Optional[_Union[TaskError, _Mapping]] = ..., provider: _Optional[str] = ..., attempts: _Optional[int] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., deduplicated: _Optional[bool] = ..., model: _Optional[str] = ..., device: _Optional[str] = ...) -> None: ...

class BatchSummary(_message.Message):
    __slots__ = ("total", "succeeded", "failed", "cancelled", "duration_ms")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    total: int
    succeeded: int
    failed: int
    cancelled: int
    duration_ms: int
    def __init__(self, total: _Optional[int] = ..., succeeded: _Optional[int] = ..., failed: _Optional[int] = ..., cancelled: _Optional[int] = ..., duration_ms: _Optional[int] = ...) -> None: ...

class Accepted(_message.Message):
    __slots__ = ("batch_id", "task_ids")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, batch_id: _Optional[str] = ..., task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class TaskAccepted(_message.Message):
    __slots__ = ("task_index", "task_id")
    TASK_INDEX_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_index: int
    task_id: str
    def __init__(self, task_index: _Optional[int] = ..., task_id: _Optional[str] = ...) -> None: ...

class BatchEvent(_message.Message):
    __slots__ = ("batch_id", "cursor", "accepted", "task_accepted", "result", "summary")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    TASK_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    cursor: str
    accepted: Accepted
    task_accepted: TaskAccepted
    result: TaskResult
    summary: BatchSummary
    def __init__(self, batch_id: _Optional[str] = ..., cursor: _Optional[str] = ..., accepted: _Optional[_Union[Accepted, _Mapping]] = ..., task_accepted: _Optional[_Union[TaskAccepted, _Mapping]] = ..., result: _Optional[_Union[TaskResult, _Mapping]] = ..., summary: _Optional[_Union[BatchSummary, _Mapping]] = ...) -> None: ...

class SubmitBatchRequest(_message.Message):
    __slots__ = ("tasks", "credentials", "batch_id", "priority")
    class CredentialsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASKS_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    credentials: _containers.ScalarMap[str, str]
    batch_id: str
    priority: int
    def __init__(self, tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ..., credentials: _Optional[_Mapping[str, str]] = ..., batch_id: _Optional[str] = ..., priority: _Optional[int] = ...) -> None: ...

class StreamOpen(_message.Message):
    __slots__ = ("credentials", "batch_id", "priority", "keep_running_on_disconnect")
    class CredentialsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    KEEP_RUNNING_ON_DISCONNECT_FIELD_NUMBER: _ClassVar[int]
    credentials: _containers.ScalarMap[str, str]
    batch_id: str
    priority: int
    keep_running_on_disconnect: bool
    def __init__(self, credentials: _Optional[_Mapping[str, str]] = ..., batch_id: _Optional[str] = ..., priority: _Optional[int] = ..., keep_running_on_disconnect: _Optional[bool] = ...) -> None: ...

class StreamClose(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("open", "task", "close")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    open: StreamOpen
    task: Task
    close: StreamClose
    def __init__(self, open: _Optional[_Union[StreamOpen, _Mapping]] = ..., task: _Optional[_Union[Task, _Mapping]] = ..., close: _Optional[_Union[StreamClose, _Mapping]] = ...) -> None: ...

class WatchBatchRequest(_message.Message):
    __slots__ = ("batch_id", "after_cursor")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_CURSOR_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    after_cursor: str
    def __init__(self, batch_id: _Optional[str] = ..., after_cursor: _Optional[str] = ...) -> None: ...

class GetBatchRequest(_message.Message):
    __slots__ = ("batch_id",)
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    def __init__(self, batch_id: _Optional[str] = ...) -> None: ...

class CancelBatchRequest(_message.Message):
    __slots__ = ("batch_id",)
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    def __init__(self, batch_id: _Optional[str] = ...) -> None: ...

class TaskStatus(_message.Message):
    __slots__ = ("task_index", "task_id", "state", "attempts", "output_filename")
    TASK_INDEX_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FILENAME_FIELD_NUMBER: _ClassVar[int]
    task_index: int
    task_id: str
    state: TaskState
    attempts: int
    output_filename: str
    def __init__(self, task_index: _Optional[int] = ..., task_id: _Optional[str] = ..., state: _Optional[_Union[TaskState, str]] = ..., attempts: _Optional[int] = ..., output_filename: _Optional[str] = ...) -> None: ...

class BatchStatus(_message.Message):
    __slots__ = ("batch_id", "total", "queued", "running", "succeeded", "failed", "cancelled", "done", "closed", "tasks")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    total: int
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    done: bool
    closed: bool
    tasks: _containers.RepeatedCompositeFieldContainer[TaskStatus]
    def __init__(self, batch_id: _Optional[str] = ..., total: _Optional[int] = ..., queued: _Optional[int] = ..., running: _Optional[int] = ..., succeeded: _Optional[int] = ..., failed: _Optional[int] = ..., cancelled: _Optional[int] = ..., done: _Optional[bool] = ..., closed: _Optional[bool] = ..., tasks: _Optional[_Iterable[_Union[TaskStatus, _Mapping]]] = ...) -> None: ...

class DownloadFileRequest(_message.Message):
    __slots__ = ("batch_id", "object")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    object: str
    def __init__(self, batch_id: _Optional[str] = ..., object: _Optional[str] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("data", "size_bytes", "content_type", "filename")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    size_bytes: int
    content_type: str
    filename: str
    def __init__(self, data: _Optional[bytes] = ..., size_bytes: _Optional[int] = ..., content_type: _Optional[str] = ..., filename: _Optional[str] = ...) -> None: ...

class UploadInputHeader(_message.Message):
    __slots__ = ("filename", "content_type")
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    filename: str
    content_type: str
    def __init__(self, filename: _Optional[str] = ..., content_type: _Optional[str] = ...) -> None: ...

class UploadInputRequest(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: UploadInputHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[UploadInputHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class StoredInput(_message.Message):
    __slots__ = ("object", "size_bytes")
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    object: str
    size_bytes: int
    def __init__(self, object: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LiveLease(_message.Message):
    __slots__ = ("lease_id", "holder", "ttl_ms", "fence", "zombie")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    ZOMBIE_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    holder: str
    ttl_ms: int
    fence: int
    zombie: bool
    def __init__(self, lease_id: _Optional[str] = ..., holder: _Optional[str] = ..., ttl_ms: _Optional[int] = ..., fence: _Optional[int] = ..., zombie: _Optional[bool] = ...) -> None: ...

class KeyInfo(_message.Message):
    __slots__ = ("id", "provider", "alias", "limit", "in_use", "waiting", "leases", "quarantined")
    ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    IN_USE_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    id: str
    provider: str
    alias: str
    limit: int
    in_use: int
    waiting: int
    leases: _containers.RepeatedCompositeFieldContainer[LiveLease]
    quarantined: bool
    def __init__(self, id: _Optional[str] = ..., provider: _Optional[str] = ..., alias: _Optional[str] = ..., limit: _Optional[int] = ..., in_use: _Optional[int] = ..., waiting: _Optional[int] = ..., leases: _Optional[_Iterable[_Union[LiveLease, _Mapping]]] = ..., quarantined: _Optional[bool] = ...) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[KeyInfo]
    def __init__(self, keys: _Optional[_Iterable[_Union[KeyInfo, _Mapping]]] = ...) -> None: ...

class SetKeyLimitRequest(_message.Message):
    __slots__ = ("key", "limit")
    KEY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    key: str
    limit: int
    def __init__(self, key: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("worker_id", "pool", "capacity", "in_flight", "gateway", "device", "connected_ms", "draining")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_MS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    pool: str
    capacity: int
    in_flight: int
    gateway: str
    device: str
    connected_ms: int
    draining: bool
    def __init__(self, worker_id: _Optional[str] = ..., pool: _Optional[str] = ..., capacity: _Optional[int] = ..., in_flight: _Optional[int] = ..., gateway: _Optional[str] = ..., device: _Optional[str] = ..., connected_ms: _Optional[int] = ..., draining: _Optional[bool] = ...) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ...) -> None: ...

class ListProvidersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProviderInfo(_message.Message):
    __slots__ = ("name", "circuit", "recent_successes", "recent_failures")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CIRCUIT_FIELD_NUMBER: _ClassVar[int]
    RECENT_SUCCESSES_FIELD_NUMBER: _ClassVar[int]
    RECENT_FAILURES_FIELD_NUMBER: _ClassVar[int]
    name: str
    circuit: str
    recent_successes: int
    recent_failures: int
    def __init__(self, name: _Optional[str] = ..., circuit: _Optional[str] = ..., recent_successes: _Optional[int] = ..., recent_failures: _Optional[int] = ...) -> None: ...

class ListProvidersResponse(_message.Message):
    __slots__ = ("providers",)
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    providers: _containers.RepeatedCompositeFieldContainer[ProviderInfo]
    def __init__(self, providers: _Optional[_Iterable[_Union[ProviderInfo, _Mapping]]] = ...) -> None: ...
