from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENCODING_UNSPECIFIED: _ClassVar[Encoding]
    ENCODING_CLOUDPICKLE: _ClassVar[Encoding]
    ENCODING_JSON: _ClassVar[Encoding]

class WorkerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKER_STATE_UNSPECIFIED: _ClassVar[WorkerState]
    WORKER_STATE_STARTING: _ClassVar[WorkerState]
    WORKER_STATE_DOWNLOADING: _ClassVar[WorkerState]
    WORKER_STATE_INSTALLING: _ClassVar[WorkerState]
    WORKER_STATE_LOADING: _ClassVar[WorkerState]
    WORKER_STATE_BENCHMARKING: _ClassVar[WorkerState]
    WORKER_STATE_READY: _ClassVar[WorkerState]
    WORKER_STATE_DRAINING: _ClassVar[WorkerState]
    WORKER_STATE_STOPPED: _ClassVar[WorkerState]
    WORKER_STATE_FAILED: _ClassVar[WorkerState]
    WORKER_STATE_PULLING: _ClassVar[WorkerState]

class EndpointState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENDPOINT_STATE_UNSPECIFIED: _ClassVar[EndpointState]
    ENDPOINT_STATE_DEPLOYING: _ClassVar[EndpointState]
    ENDPOINT_STATE_READY: _ClassVar[EndpointState]
    ENDPOINT_STATE_FAILED: _ClassVar[EndpointState]
    ENDPOINT_STATE_STOPPED: _ClassVar[EndpointState]
    ENDPOINT_STATE_WAITING: _ClassVar[EndpointState]

class UpdateTier(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPDATE_TIER_UNSPECIFIED: _ClassVar[UpdateTier]
    UPDATE_TIER_NONE: _ClassVar[UpdateTier]
    UPDATE_TIER_SETTINGS: _ClassVar[UpdateTier]
    UPDATE_TIER_CODE: _ClassVar[UpdateTier]
    UPDATE_TIER_ENVIRONMENT: _ClassVar[UpdateTier]
    UPDATE_TIER_NEW_ENDPOINT: _ClassVar[UpdateTier]

class PortProtocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PORT_PROTOCOL_UNSPECIFIED: _ClassVar[PortProtocol]
    PORT_PROTOCOL_TCP: _ClassVar[PortProtocol]
    PORT_PROTOCOL_UDP: _ClassVar[PortProtocol]
ENCODING_UNSPECIFIED: Encoding
ENCODING_CLOUDPICKLE: Encoding
ENCODING_JSON: Encoding
WORKER_STATE_UNSPECIFIED: WorkerState
WORKER_STATE_STARTING: WorkerState
WORKER_STATE_DOWNLOADING: WorkerState
WORKER_STATE_INSTALLING: WorkerState
WORKER_STATE_LOADING: WorkerState
WORKER_STATE_BENCHMARKING: WorkerState
WORKER_STATE_READY: WorkerState
WORKER_STATE_DRAINING: WorkerState
WORKER_STATE_STOPPED: WorkerState
WORKER_STATE_FAILED: WorkerState
WORKER_STATE_PULLING: WorkerState
ENDPOINT_STATE_UNSPECIFIED: EndpointState
ENDPOINT_STATE_DEPLOYING: EndpointState
ENDPOINT_STATE_READY: EndpointState
ENDPOINT_STATE_FAILED: EndpointState
ENDPOINT_STATE_STOPPED: EndpointState
ENDPOINT_STATE_WAITING: EndpointState
UPDATE_TIER_UNSPECIFIED: UpdateTier
UPDATE_TIER_NONE: UpdateTier
UPDATE_TIER_SETTINGS: UpdateTier
UPDATE_TIER_CODE: UpdateTier
UPDATE_TIER_ENVIRONMENT: UpdateTier
UPDATE_TIER_NEW_ENDPOINT: UpdateTier
PORT_PROTOCOL_UNSPECIFIED: PortProtocol
PORT_PROTOCOL_TCP: PortProtocol
PORT_PROTOCOL_UDP: PortProtocol

class Failure(_message.Message):
    __slots__ = ("step", "message", "log_tail")
    STEP_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LOG_TAIL_FIELD_NUMBER: _ClassVar[int]
    step: str
    message: str
    log_tail: str
    def __init__(self, step: _Optional[str] = ..., message: _Optional[str] = ..., log_tail: _Optional[str] = ...) -> None: ...

class PublishedPort(_message.Message):
    __slots__ = ("port", "protocol", "address")
    PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    port: int
    protocol: PortProtocol
    address: str
    def __init__(self, port: _Optional[int] = ..., protocol: _Optional[_Union[PortProtocol, str]] = ..., address: _Optional[str] = ...) -> None: ...

class Worker(_message.Message):
    __slots__ = ("worker_id", "endpoint_id", "revision_id", "state", "address", "score", "capacity", "pid", "failure", "last_heartbeat", "published_ports", "gpus")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_PORTS_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    endpoint_id: str
    revision_id: str
    state: WorkerState
    address: str
    score: float
    capacity: int
    pid: int
    failure: Failure
    last_heartbeat: float
    published_ports: _containers.RepeatedCompositeFieldContainer[PublishedPort]
    gpus: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, worker_id: _Optional[str] = ..., endpoint_id: _Optional[str] = ..., revision_id: _Optional[str] = ..., state: _Optional[_Union[WorkerState, str]] = ..., address: _Optional[str] = ..., score: _Optional[float] = ..., capacity: _Optional[int] = ..., pid: _Optional[int] = ..., failure: _Optional[_Union[Failure, _Mapping]] = ..., last_heartbeat: _Optional[float] = ..., published_ports: _Optional[_Iterable[_Union[PublishedPort, _Mapping]]] = ..., gpus: _Optional[_Iterable[int]] = ...) -> None: ...
