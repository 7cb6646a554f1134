from vastrpc.api.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RequirementOperator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REQUIREMENT_OPERATOR_UNSPECIFIED: _ClassVar[RequirementOperator]
    REQUIREMENT_OPERATOR_EQ: _ClassVar[RequirementOperator]
    REQUIREMENT_OPERATOR_NE: _ClassVar[RequirementOperator]
    REQUIREMENT_OPERATOR_LT: _ClassVar[RequirementOperator]
    REQUIREMENT_OPERATOR_LE: _ClassVar[RequirementOperator]
    REQUIREMENT_OPERATOR_GT: _ClassVar[RequirementOperator]
    REQUIREMENT_OPERATOR_GE: _ClassVar[RequirementOperator]
    REQUIREMENT_OPERATOR_IN: _ClassVar[RequirementOperator]
    REQUIREMENT_OPERATOR_NOT_IN: _ClassVar[RequirementOperator]
REQUIREMENT_OPERATOR_UNSPECIFIED: RequirementOperator
REQUIREMENT_OPERATOR_EQ: RequirementOperator
REQUIREMENT_OPERATOR_NE: RequirementOperator
REQUIREMENT_OPERATOR_LT: RequirementOperator
REQUIREMENT_OPERATOR_LE: RequirementOperator
REQUIREMENT_OPERATOR_GT: RequirementOperator
REQUIREMENT_OPERATOR_GE: RequirementOperator
REQUIREMENT_OPERATOR_IN: RequirementOperator
REQUIREMENT_OPERATOR_NOT_IN: RequirementOperator

class AutoscalingSpec(_message.Message):
    __slots__ = ("min_workers", "max_workers", "cold_workers", "target_util", "inactivity_timeout", "min_load", "min_cold_load", "cold_mult", "max_queue_time", "target_queue_time")
    MIN_WORKERS_FIELD_NUMBER: _ClassVar[int]
    MAX_WORKERS_FIELD_NUMBER: _ClassVar[int]
    COLD_WORKERS_FIELD_NUMBER: _ClassVar[int]
    TARGET_UTIL_FIELD_NUMBER: _ClassVar[int]
    INACTIVITY_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    MIN_LOAD_FIELD_NUMBER: _ClassVar[int]
    MIN_COLD_LOAD_FIELD_NUMBER: _ClassVar[int]
    COLD_MULT_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_TIME_FIELD_NUMBER: _ClassVar[int]
    TARGET_QUEUE_TIME_FIELD_NUMBER: _ClassVar[int]
    min_workers: int
    max_workers: int
    cold_workers: int
    target_util: float
    inactivity_timeout: float
    min_load: float
    min_cold_load: float
    cold_mult: float
    max_queue_time: float
    target_queue_time: float
    def __init__(self, min_workers: _Optional[int] = ..., max_workers: _Optional[int] = ..., cold_workers: _Optional[int] = ..., target_util: _Optional[float] = ..., inactivity_timeout: _Optional[float] = ..., min_load: _Optional[float] = ..., min_cold_load: _Optional[float] = ..., cold_mult: _Optional[float] = ..., max_queue_time: _Optional[float] = ..., target_queue_time: _Optional[float] = ...) -> None: ...

class ImageSpec(_message.Message):
    __slots__ = ("from_image", "pip_packages", "apt_packages", "env", "sealed_secrets", "startup_commands", "requirements", "storage", "startup_timeout", "queries", "python_environment", "published_ports", "absolute_copies")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class SealedSecretsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    class RequirementsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FROM_IMAGE_FIELD_NUMBER: _ClassVar[int]
    PIP_PACKAGES_FIELD_NUMBER: _ClassVar[int]
    APT_PACKAGES_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    SEALED_SECRETS_FIELD_NUMBER: _ClassVar[int]
    STARTUP_COMMANDS_FIELD_NUMBER: _ClassVar[int]
    REQUIREMENTS_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    STARTUP_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    PYTHON_ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_PORTS_FIELD_NUMBER: _ClassVar[int]
    ABSOLUTE_COPIES_FIELD_NUMBER: _ClassVar[int]
    from_image: str
    pip_packages: _containers.RepeatedScalarFieldContainer[str]
    apt_packages: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    sealed_secrets: _containers.ScalarMap[str, bytes]
    startup_commands: _containers.RepeatedScalarFieldContainer[str]
    requirements: _containers.ScalarMap[str, str]
    storage: str
    startup_timeout: float
    queries: _containers.RepeatedCompositeFieldContainer[Requirement]
    python_environment: PythonEnvironment
    published_ports: _containers.RepeatedCompositeFieldContainer[_common_pb2.PublishedPort]
    absolute_copies: _containers.RepeatedCompositeFieldContainer[AbsoluteCopy]
    def __init__(self, from_image: _Optional[str] = ..., pip_packages: _Optional[_Iterable[str]] = ..., apt_packages: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., sealed_secrets: _Optional[_Mapping[str, bytes]] = ..., startup_commands: _Optional[_Iterable[str]] = ..., requirements: _Optional[_Mapping[str, str]] = ..., storage: _Optional[str] = ..., startup_timeout: _Optional[float] = ..., queries: _Optional[_Iterable[_Union[Requirement, _Mapping]]] = ..., python_environment: _Optional[_Union[PythonEnvironment, _Mapping]] = ..., published_ports: _Optional[_Iterable[_Union[_common_pb2.PublishedPort, _Mapping]]] = ..., absolute_copies: _Optional[_Iterable[_Union[AbsoluteCopy, _Mapping]]] = ...) -> None: ...

class PythonEnvironment(_message.Message):
    __slots__ = ("venv_path", "system_python")
    VENV_PATH_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PYTHON_FIELD_NUMBER: _ClassVar[int]
    venv_path: str
    system_python: bool
    def __init__(self, venv_path: _Optional[str] = ..., system_python: _Optional[bool] = ...) -> None: ...

class AbsoluteCopy(_message.Message):
    __slots__ = ("bundle_path", "destination")
    BUNDLE_PATH_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    bundle_path: str
    destination: str
    def __init__(self, bundle_path: _Optional[str] = ..., destination: _Optional[str] = ...) -> None: ...

class Requirement(_message.Message):
    __slots__ = ("column", "op", "values")
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    column: str
    op: RequirementOperator
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, column: _Optional[str] = ..., op: _Optional[_Union[RequirementOperator, str]] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...

class FunctionSpec(_message.Message):
    __slots__ = ("name", "max_concurrency", "has_benchmark", "timeout", "is_generator", "max_queue_time", "max_queue", "max_argument_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    HAS_BENCHMARK_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    IS_GENERATOR_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_TIME_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    MAX_ARGUMENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    max_concurrency: int
    has_benchmark: bool
    timeout: float
    is_generator: bool
    max_queue_time: float
    max_queue: int
    max_argument_bytes: int
    def __init__(self, name: _Optional[str] = ..., max_concurrency: _Optional[int] = ..., has_benchmark: _Optional[bool] = ..., timeout: _Optional[float] = ..., is_generator: _Optional[bool] = ..., max_queue_time: _Optional[float] = ..., max_queue: _Optional[int] = ..., max_argument_bytes: _Optional[int] = ...) -> None: ...

class RevisionDigests(_message.Message):
    __slots__ = ("bundle", "code", "environment", "autoscaling")
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    AUTOSCALING_FIELD_NUMBER: _ClassVar[int]
    bundle: str
    code: str
    environment: str
    autoscaling: str
    def __init__(self, bundle: _Optional[str] = ..., code: _Optional[str] = ..., environment: _Optional[str] = ..., autoscaling: _Optional[str] = ...) -> None: ...

class DeploymentSpec(_message.Message):
    __slots__ = ("name", "tag", "version_label", "module", "image", "autoscaling", "functions", "ttl", "digests", "bundle_size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    VERSION_LABEL_FIELD_NUMBER: _ClassVar[int]
    MODULE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    AUTOSCALING_FIELD_NUMBER: _ClassVar[int]
    FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    tag: str
    version_label: str
    module: str
    image: ImageSpec
    autoscaling: AutoscalingSpec
    functions: _containers.RepeatedCompositeFieldContainer[FunctionSpec]
    ttl: float
    digests: RevisionDigests
    bundle_size: int
    def __init__(self, name: _Optional[str] = ..., tag: _Optional[str] = ..., version_label: _Optional[str] = ..., module: _Optional[str] = ..., image: _Optional[_Union[ImageSpec, _Mapping]] = ..., autoscaling: _Optional[_Union[AutoscalingSpec, _Mapping]] = ..., functions: _Optional[_Iterable[_Union[FunctionSpec, _Mapping]]] = ..., ttl: _Optional[float] = ..., digests: _Optional[_Union[RevisionDigests, _Mapping]] = ..., bundle_size: _Optional[int] = ...) -> None: ...

class RegisterDeploymentRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: DeploymentSpec
    def __init__(self, spec: _Optional[_Union[DeploymentSpec, _Mapping]] = ...) -> None: ...

class RegisterDeploymentResponse(_message.Message):
    __slots__ = ("deployment_id", "endpoint_id", "revision_id", "tier", "upload_required")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    endpoint_id: str
    revision_id: str
    tier: _common_pb2.UpdateTier
    upload_required: bool
    def __init__(self, deployment_id: _Optional[str] = ..., endpoint_id: _Optional[str] = ..., revision_id: _Optional[str] = ..., tier: _Optional[_Union[_common_pb2.UpdateTier, str]] = ..., upload_required: _Optional[bool] = ...) -> None: ...

class UploadBundleRequest(_message.Message):
    __slots__ = ("header", "chunk")
    class Header(_message.Message):
        __slots__ = ("digest", "size")
        DIGEST_FIELD_NUMBER: _ClassVar[int]
        SIZE_FIELD_NUMBER: _ClassVar[int]
        digest: str
        size: int
        def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadBundleRequest.Header
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UploadBundleRequest.Header, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadBundleResponse(_message.Message):
    __slots__ = ("digest", "size", "stored")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size: int
    stored: bool
    def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ..., stored: _Optional[bool] = ...) -> None: ...

class MissingFilesRequest(_message.Message):
    __slots__ = ("digests",)
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    digests: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, digests: _Optional[_Iterable[str]] = ...) -> None: ...

class MissingFilesResponse(_message.Message):
    __slots__ = ("missing",)
    MISSING_FIELD_NUMBER: _ClassVar[int]
    missing: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, missing: _Optional[_Iterable[str]] = ...) -> None: ...

class BundleFile(_message.Message):
    __slots__ = ("digest", "content")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    digest: str
    content: bytes
    def __init__(self, digest: _Optional[str] = ..., content: _Optional[bytes] = ...) -> None: ...

class BundleFiles(_message.Message):
    __slots__ = ("files",)
    FILES_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[BundleFile]
    def __init__(self, files: _Optional[_Iterable[_Union[BundleFile, _Mapping]]] = ...) -> None: ...

class UploadFilesRequest(_message.Message):
    __slots__ = ("header", "chunk", "files")
    class Header(_message.Message):
        __slots__ = ("digest", "size")
        DIGEST_FIELD_NUMBER: _ClassVar[int]
        SIZE_FIELD_NUMBER: _ClassVar[int]
        digest: str
        size: int
        def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    header: UploadFilesRequest.Header
    chunk: bytes
    files: BundleFiles
    def __init__(self, header: _Optional[_Union[UploadFilesRequest.Header, _Mapping]] = ..., chunk: _Optional[bytes] = ..., files: _Optional[_Union[BundleFiles, _Mapping]] = ...) -> None: ...

class UploadFilesResponse(_message.Message):
    __slots__ = ("files", "stored", "size")
    FILES_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    files: int
    stored: int
    size: int
    def __init__(self, files: _Optional[int] = ..., stored: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class DownloadBundleRequest(_message.Message):
    __slots__ = ("digest",)
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    digest: str
    def __init__(self, digest: _Optional[str] = ...) -> None: ...

class DownloadFilesRequest(_message.Message):
    __slots__ = ("bundle", "digests", "packed")
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    bundle: str
    digests: _containers.RepeatedScalarFieldContainer[str]
    packed: bool
    def __init__(self, bundle: _Optional[str] = ..., digests: _Optional[_Iterable[str]] = ..., packed: _Optional[bool] = ...) -> None: ...

class DownloadFilesResponse(_message.Message):
    __slots__ = ("digest", "chunk", "url", "files")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    digest: str
    chunk: bytes
    url: str
    files: _containers.RepeatedCompositeFieldContainer[BundleFile]
    def __init__(self, digest: _Optional[str] = ..., chunk: _Optional[bytes] = ..., url: _Optional[str] = ..., files: _Optional[_Iterable[_Union[BundleFile, _Mapping]]] = ...) -> None: ...

class DownloadBundleResponse(_message.Message):
    __slots__ = ("chunk", "url")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    chunk: bytes
    url: str
    def __init__(self, chunk: _Optional[bytes] = ..., url: _Optional[str] = ...) -> None: ...

class ProvisionRequest(_message.Message):
    __slots__ = ("endpoint_id", "revision_id")
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_ID_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    revision_id: str
    def __init__(self, endpoint_id: _Optional[str] = ..., revision_id: _Optional[str] = ...) -> None: ...

class ProvisionResponse(_message.Message):
    __slots__ = ("workers_started", "warnings")
    WORKERS_STARTED_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    workers_started: int
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, workers_started: _Optional[int] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class WatchEndpointRequest(_message.Message):
    __slots__ = ("endpoint_id", "deltas")
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    deltas: bool
    def __init__(self, endpoint_id: _Optional[str] = ..., deltas: _Optional[bool] = ...) -> None: ...

class WatchEndpointResponse(_message.Message):
    __slots__ = ("endpoint_id", "state", "revision_id", "workers", "endpoint_token", "failure", "desired_workers", "autoscaling", "keepalive", "delta", "removed_worker_ids")
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REVISION_ID_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    DESIRED_WORKERS_FIELD_NUMBER: _ClassVar[int]
    AUTOSCALING_FIELD_NUMBER: _ClassVar[int]
    KEEPALIVE_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    REMOVED_WORKER_IDS_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    state: _common_pb2.EndpointState
    revision_id: str
    workers: _containers.RepeatedCompositeFieldContainer[_common_pb2.Worker]
    endpoint_token: str
    failure: _common_pb2.Failure
    desired_workers: int
    autoscaling: AutoscalingSpec
    keepalive: bool
    delta: bool
    removed_worker_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, endpoint_id: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.EndpointState, str]] = ..., revision_id: _Optional[str] = ..., workers: _Optional[_Iterable[_Union[_common_pb2.Worker, _Mapping]]] = ..., endpoint_token: _Optional[str] = ..., failure: _Optional[_Union[_common_pb2.Failure, _Mapping]] = ..., desired_workers: _Optional[int] = ..., autoscaling: _Optional[_Union[AutoscalingSpec, _Mapping]] = ..., keepalive: _Optional[bool] = ..., delta: _Optional[bool] = ..., removed_worker_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RegisterWorkerRequest(_message.Message):
    __slots__ = ("worker_id", "pid", "hostname")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    pid: int
    hostname: str
    def __init__(self, worker_id: _Optional[str] = ..., pid: _Optional[int] = ..., hostname: _Optional[str] = ...) -> None: ...

class RegisterWorkerResponse(_message.Message):
    __slots__ = ("endpoint_id", "revision_id", "spec", "endpoint_token", "heartbeat_interval", "serve_metrics")
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    SERVE_METRICS_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    revision_id: str
    spec: DeploymentSpec
    endpoint_token: str
    heartbeat_interval: float
    serve_metrics: bool
    def __init__(self, endpoint_id: _Optional[str] = ..., revision_id: _Optional[str] = ..., spec: _Optional[_Union[DeploymentSpec, _Mapping]] = ..., endpoint_token: _Optional[str] = ..., heartbeat_interval: _Optional[float] = ..., serve_metrics: _Optional[bool] = ...) -> None: ...

class UpdateWorkerRequest(_message.Message):
    __slots__ = ("worker_id", "state", "revision_id", "address", "score", "capacity", "failure", "metrics_address", "published_ports")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REVISION_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    METRICS_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_PORTS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    state: _common_pb2.WorkerState
    revision_id: str
    address: str
    score: float
    capacity: int
    failure: _common_pb2.Failure
    metrics_address: str
    published_ports: _containers.RepeatedCompositeFieldContainer[_common_pb2.PublishedPort]
    def __init__(self, worker_id: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.WorkerState, str]] = ..., revision_id: _Optional[str] = ..., address: _Optional[str] = ..., score: _Optional[float] = ..., capacity: _Optional[int] = ..., failure: _Optional[_Union[_common_pb2.Failure, _Mapping]] = ..., metrics_address: _Optional[str] = ..., published_ports: _Optional[_Iterable[_Union[_common_pb2.PublishedPort, _Mapping]]] = ...) -> None: ...

class UpdateWorkerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("worker_id", "calls_in_flight", "calls_queued", "calls_started", "call_stats", "metrics_address")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    CALLS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    CALLS_QUEUED_FIELD_NUMBER: _ClassVar[int]
    CALLS_STARTED_FIELD_NUMBER: _ClassVar[int]
    CALL_STATS_FIELD_NUMBER: _ClassVar[int]
    METRICS_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    calls_in_flight: int
    calls_queued: int
    calls_started: int
    call_stats: _containers.RepeatedCompositeFieldContainer[CallStats]
    metrics_address: str
    def __init__(self, worker_id: _Optional[str] = ..., calls_in_flight: _Optional[int] = ..., calls_queued: _Optional[int] = ..., calls_started: _Optional[int] = ..., call_stats: _Optional[_Iterable[_Union[CallStats, _Mapping]]] = ..., metrics_address: _Optional[str] = ...) -> None: ...

class CallStats(_message.Message):
    __slots__ = ("source", "functions")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    source: str
    functions: _containers.RepeatedCompositeFieldContainer[FunctionCallStats]
    def __init__(self, source: _Optional[str] = ..., functions: _Optional[_Iterable[_Union[FunctionCallStats, _Mapping]]] = ...) -> None: ...

class FunctionCallStats(_message.Message):
    __slots__ = ("function", "calls", "duration_bounds", "duration_buckets", "duration_sum")
    class CallsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    DURATION_BOUNDS_FIELD_NUMBER: _ClassVar[int]
    DURATION_BUCKETS_FIELD_NUMBER: _ClassVar[int]
    DURATION_SUM_FIELD_NUMBER: _ClassVar[int]
    function: str
    calls: _containers.ScalarMap[str, int]
    duration_bounds: _containers.RepeatedScalarFieldContainer[float]
    duration_buckets: _containers.RepeatedScalarFieldContainer[int]
    duration_sum: float
    def __init__(self, function: _Optional[str] = ..., calls: _Optional[_Mapping[str, int]] = ..., duration_bounds: _Optional[_Iterable[float]] = ..., duration_buckets: _Optional[_Iterable[int]] = ..., duration_sum: _Optional[float] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("stop",)
    STOP_FIELD_NUMBER: _ClassVar[int]
    stop: bool
    def __init__(self, stop: _Optional[bool] = ...) -> None: ...

class HeartbeatStreamRequest(_message.Message):
    __slots__ = ("beat", "answer_every")
    BEAT_FIELD_NUMBER: _ClassVar[int]
    ANSWER_EVERY_FIELD_NUMBER: _ClassVar[int]
    beat: HeartbeatRequest
    answer_every: int
    def __init__(self, beat: _Optional[_Union[HeartbeatRequest, _Mapping]] = ..., answer_every: _Optional[int] = ...) -> None: ...

class HeartbeatStreamResponse(_message.Message):
    __slots__ = ("beat",)
    BEAT_FIELD_NUMBER: _ClassVar[int]
    beat: HeartbeatResponse
    def __init__(self, beat: _Optional[_Union[HeartbeatResponse, _Mapping]] = ...) -> None: ...

class WatchWorkerRequest(_message.Message):
    __slots__ = ("worker_id",)
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    def __init__(self, worker_id: _Optional[str] = ...) -> None: ...

class WatchWorkerResponse(_message.Message):
    __slots__ = ("revision_id", "spec", "endpoint_token", "stop")
    REVISION_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    revision_id: str
    spec: DeploymentSpec
    endpoint_token: str
    stop: bool
    def __init__(self, revision_id: _Optional[str] = ..., spec: _Optional[_Union[DeploymentSpec, _Mapping]] = ..., endpoint_token: _Optional[str] = ..., stop: _Optional[bool] = ...) -> None: ...

class WakeEndpointRequest(_message.Message):
    __slots__ = ("endpoint_id",)
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    def __init__(self, endpoint_id: _Optional[str] = ...) -> None: ...

class WakeEndpointResponse(_message.Message):
    __slots__ = ("workers_started",)
    WORKERS_STARTED_FIELD_NUMBER: _ClassVar[int]
    workers_started: int
    def __init__(self, workers_started: _Optional[int] = ...) -> None: ...

class HoldSessionRequest(_message.Message):
    __slots__ = ("endpoint_id", "session_id", "worker_id", "ttl_seconds")
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    session_id: str
    worker_id: str
    ttl_seconds: float
    def __init__(self, endpoint_id: _Optional[str] = ..., session_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., ttl_seconds: _Optional[float] = ...) -> None: ...

class HoldSessionResponse(_message.Message):
    __slots__ = ("worker_active",)
    WORKER_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    worker_active: bool
    def __init__(self, worker_active: _Optional[bool] = ...) -> None: ...

class ListDeploymentsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("endpoint_id", "tag", "state", "revision_id", "workers", "autoscaling", "failure", "live_revision_tier", "ttl", "desired_workers", "last_client_seen", "worker_activity", "version_label")
    class WorkerActivityEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: WorkerActivity
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[WorkerActivity, _Mapping]] = ...) -> None: ...
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REVISION_ID_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    AUTOSCALING_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    LIVE_REVISION_TIER_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    DESIRED_WORKERS_FIELD_NUMBER: _ClassVar[int]
    LAST_CLIENT_SEEN_FIELD_NUMBER: _ClassVar[int]
    WORKER_ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    VERSION_LABEL_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    tag: str
    state: _common_pb2.EndpointState
    revision_id: str
    workers: _containers.RepeatedCompositeFieldContainer[_common_pb2.Worker]
    autoscaling: AutoscalingSpec
    failure: _common_pb2.Failure
    live_revision_tier: _common_pb2.UpdateTier
    ttl: float
    desired_workers: int
    last_client_seen: float
    worker_activity: _containers.MessageMap[str, WorkerActivity]
    version_label: str
    def __init__(self, endpoint_id: _Optional[str] = ..., tag: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.EndpointState, str]] = ..., revision_id: _Optional[str] = ..., workers: _Optional[_Iterable[_Union[_common_pb2.Worker, _Mapping]]] = ..., autoscaling: _Optional[_Union[AutoscalingSpec, _Mapping]] = ..., failure: _Optional[_Union[_common_pb2.Failure, _Mapping]] = ..., live_revision_tier: _Optional[_Union[_common_pb2.UpdateTier, str]] = ..., ttl: _Optional[float] = ..., desired_workers: _Optional[int] = ..., last_client_seen: _Optional[float] = ..., worker_activity: _Optional[_Mapping[str, WorkerActivity]] = ..., version_label: _Optional[str] = ...) -> None: ...

class WorkerActivity(_message.Message):
    __slots__ = ("calls_in_flight", "calls_queued", "calls_started", "started_at")
    CALLS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    CALLS_QUEUED_FIELD_NUMBER: _ClassVar[int]
    CALLS_STARTED_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    calls_in_flight: int
    calls_queued: int
    calls_started: int
    started_at: float
    def __init__(self, calls_in_flight: _Optional[int] = ..., calls_queued: _Optional[int] = ..., calls_started: _Optional[int] = ..., started_at: _Optional[float] = ...) -> None: ...

class Deployment(_message.Message):
    __slots__ = ("deployment_id", "name", "endpoints", "created_at")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    name: str
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    created_at: float
    def __init__(self, deployment_id: _Optional[str] = ..., name: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., created_at: _Optional[float] = ...) -> None: ...

class ListDeploymentsResponse(_message.Message):
    __slots__ = ("deployments",)
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    deployments: _containers.RepeatedCompositeFieldContainer[Deployment]
    def __init__(self, deployments: _Optional[_Iterable[_Union[Deployment, _Mapping]]] = ...) -> None: ...

class GetWorkerLogsRequest(_message.Message):
    __slots__ = ("worker_id", "tail_bytes")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    TAIL_BYTES_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    tail_bytes: int
    def __init__(self, worker_id: _Optional[str] = ..., tail_bytes: _Optional[int] = ...) -> None: ...

class GetWorkerLogsResponse(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class FollowLogsRequest(_message.Message):
    __slots__ = ("worker_id", "name", "tag", "tail_lines", "follow")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    TAIL_LINES_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    name: str
    tag: str
    tail_lines: int
    follow: bool
    def __init__(self, worker_id: _Optional[str] = ..., name: _Optional[str] = ..., tag: _Optional[str] = ..., tail_lines: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class FollowLogsResponse(_message.Message):
    __slots__ = ("worker_id", "text")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    text: str
    def __init__(self, worker_id: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class JoinEndpointRequest(_message.Message):
    __slots__ = ("name", "tag")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    name: str
    tag: str
    def __init__(self, name: _Optional[str] = ..., tag: _Optional[str] = ...) -> None: ...

class JoinEndpointResponse(_message.Message):
    __slots__ = ("worker_id", "worker_token", "endpoint_id")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    worker_token: str
    endpoint_id: str
    def __init__(self, worker_id: _Optional[str] = ..., worker_token: _Optional[str] = ..., endpoint_id: _Optional[str] = ...) -> None: ...

class TeardownRequest(_message.Message):
    __slots__ = ("name", "tag")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    name: str
    tag: str
    def __init__(self, name: _Optional[str] = ..., tag: _Optional[str] = ...) -> None: ...

class TeardownResponse(_message.Message):
    __slots__ = ("endpoints_removed", "workers_stopped")
    ENDPOINTS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    WORKERS_STOPPED_FIELD_NUMBER: _ClassVar[int]
    endpoints_removed: int
    workers_stopped: int
    def __init__(self, endpoints_removed: _Optional[int] = ..., workers_stopped: _Optional[int] = ...) -> None: ...
