from vastrpc.api.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_KIND_UNSPECIFIED: _ClassVar[ErrorKind]
    ERROR_KIND_APPLICATION: _ClassVar[ErrorKind]
    ERROR_KIND_FUNCTION_NOT_FOUND: _ClassVar[ErrorKind]
    ERROR_KIND_BAD_ARGUMENTS: _ClassVar[ErrorKind]
    ERROR_KIND_BAD_RESULT: _ClassVar[ErrorKind]
    ERROR_KIND_CANCELLED: _ClassVar[ErrorKind]
    ERROR_KIND_OVERLOADED: _ClassVar[ErrorKind]
    ERROR_KIND_PROTOCOL: _ClassVar[ErrorKind]
    ERROR_KIND_DRAINING: _ClassVar[ErrorKind]

class LogStream(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOG_STREAM_UNSPECIFIED: _ClassVar[LogStream]
    LOG_STREAM_STDOUT: _ClassVar[LogStream]
    LOG_STREAM_STDERR: _ClassVar[LogStream]
ERROR_KIND_UNSPECIFIED: ErrorKind
ERROR_KIND_APPLICATION: ErrorKind
ERROR_KIND_FUNCTION_NOT_FOUND: ErrorKind
ERROR_KIND_BAD_ARGUMENTS: ErrorKind
ERROR_KIND_BAD_RESULT: ErrorKind
ERROR_KIND_CANCELLED: ErrorKind
ERROR_KIND_OVERLOADED: ErrorKind
ERROR_KIND_PROTOCOL: ErrorKind
ERROR_KIND_DRAINING: ErrorKind
LOG_STREAM_UNSPECIFIED: LogStream
LOG_STREAM_STDOUT: LogStream
LOG_STREAM_STDERR: LogStream

class CallStart(_message.Message):
    __slots__ = ("call_id", "function", "encoding", "data", "more", "timeout", "buffer_sizes", "stream_logs")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    BUFFER_SIZES_FIELD_NUMBER: _ClassVar[int]
    STREAM_LOGS_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    function: str
    encoding: _common_pb2.Encoding
    data: bytes
    more: bool
    timeout: float
    buffer_sizes: _containers.RepeatedScalarFieldContainer[int]
    stream_logs: bool
    def __init__(self, call_id: _Optional[int] = ..., function: _Optional[str] = ..., encoding: _Optional[_Union[_common_pb2.Encoding, str]] = ..., data: _Optional[bytes] = ..., more: _Optional[bool] = ..., timeout: _Optional[float] = ..., buffer_sizes: _Optional[_Iterable[int]] = ..., stream_logs: _Optional[bool] = ...) -> None: ...

class CallData(_message.Message):
    __slots__ = ("call_id", "data", "more")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    data: bytes
    more: bool
    def __init__(self, call_id: _Optional[int] = ..., data: _Optional[bytes] = ..., more: _Optional[bool] = ...) -> None: ...

class CallCancel(_message.Message):
    __slots__ = ("call_id",)
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    def __init__(self, call_id: _Optional[int] = ...) -> None: ...

class InvokeBatch(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[InvokeRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[InvokeRequest, _Mapping]]] = ...) -> None: ...

class InvokeRequest(_message.Message):
    __slots__ = ("start", "data", "cancel", "batch")
    START_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    start: CallStart
    data: CallData
    cancel: CallCancel
    batch: InvokeBatch
    def __init__(self, start: _Optional[_Union[CallStart, _Mapping]] = ..., data: _Optional[_Union[CallData, _Mapping]] = ..., cancel: _Optional[_Union[CallCancel, _Mapping]] = ..., batch: _Optional[_Union[InvokeBatch, _Mapping]] = ...) -> None: ...

class CallResult(_message.Message):
    __slots__ = ("call_id", "data", "more", "done", "encoding", "buffer_sizes")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    BUFFER_SIZES_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    data: bytes
    more: bool
    done: bool
    encoding: _common_pb2.Encoding
    buffer_sizes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, call_id: _Optional[int] = ..., data: _Optional[bytes] = ..., more: _Optional[bool] = ..., done: _Optional[bool] = ..., encoding: _Optional[_Union[_common_pb2.Encoding, str]] = ..., buffer_sizes: _Optional[_Iterable[int]] = ...) -> None: ...

class CallError(_message.Message):
    __slots__ = ("call_id", "kind", "type", "message", "traceback", "pickled")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    PICKLED_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    kind: ErrorKind
    type: str
    message: str
    traceback: str
    pickled: bytes
    def __init__(self, call_id: _Optional[int] = ..., kind: _Optional[_Union[ErrorKind, str]] = ..., type: _Optional[str] = ..., message: _Optional[str] = ..., traceback: _Optional[str] = ..., pickled: _Optional[bytes] = ...) -> None: ...

class StreamDrain(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CallLog(_message.Message):
    __slots__ = ("call_id", "stream", "text")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    stream: LogStream
    text: str
    def __init__(self, call_id: _Optional[int] = ..., stream: _Optional[_Union[LogStream, str]] = ..., text: _Optional[str] = ...) -> None: ...

class InvokeResponseBatch(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[InvokeResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[InvokeResponse, _Mapping]]] = ...) -> None: ...

class InvokeResponse(_message.Message):
    __slots__ = ("result", "error", "drain", "log", "batch")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    result: CallResult
    error: CallError
    drain: StreamDrain
    log: CallLog
    batch: InvokeResponseBatch
    def __init__(self, result: _Optional[_Union[CallResult, _Mapping]] = ..., error: _Optional[_Union[CallError, _Mapping]] = ..., drain: _Optional[_Union[StreamDrain, _Mapping]] = ..., log: _Optional[_Union[CallLog, _Mapping]] = ..., batch: _Optional[_Union[InvokeResponseBatch, _Mapping]] = ...) -> None: ...

class GetWorkerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetWorkerInfoResponse(_message.Message):
    __slots__ = ("worker_id", "endpoint_id", "revision_id", "functions", "score", "capacity", "pid", "calls_in_flight", "calls_queued", "calls_started")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    CALLS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    CALLS_QUEUED_FIELD_NUMBER: _ClassVar[int]
    CALLS_STARTED_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    endpoint_id: str
    revision_id: str
    functions: _containers.RepeatedScalarFieldContainer[str]
    score: float
    capacity: int
    pid: int
    calls_in_flight: int
    calls_queued: int
    calls_started: int
    def __init__(self, worker_id: _Optional[str] = ..., endpoint_id: _Optional[str] = ..., revision_id: _Optional[str] = ..., functions: _Optional[_Iterable[str]] = ..., score: _Optional[float] = ..., capacity: _Optional[int] = ..., pid: _Optional[int] = ..., calls_in_flight: _Optional[int] = ..., calls_queued: _Optional[int] = ..., calls_started: _Optional[int] = ...) -> None: ...
