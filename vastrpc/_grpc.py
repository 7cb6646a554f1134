"""The gRPC layer shared by every part: channel options, auth, servers, and the status-to-exception table."""

from __future__ import annotations

import hmac
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from vastrpc._errors import (
    AuthenticationError,
    BundleError,
    CallTimeoutError,
    ControlServiceError,
    ControlUnavailableError,
    DefinitionError,
    DeploymentError,
    NotFoundError,
    VastrpcError,
    WorkerUnavailableError,
)
from vastrpc._packed import send_raw
from vastrpc._tls import TlsFiles

AUTH_HEADER = "authorization"
# Arguments and results travel in chunks of this size: 1 MiB is the measured sweet spot
# for throughput and stays well under gRPC's default 4 MiB receive limit.
CHUNK_SIZE = 1 << 20
_MAX_MESSAGE = 8 << 20
# Invoke call and initial metadata: this side reads InvokeBatch / InvokeResponseBatch messages,
# so the other may pack several messages in one (one gRPC write for many calls).
BATCH_METADATA = ("vastrpc-batch", "1")

# Keepalive pings find a dead or frozen peer (within 15 s) without waiting for TCP to notice.
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.enable_retries", 0),
    # A restarted control service or worker is found again within 2 s (gRPC's default backs
    # off to 120 s, and a channel between two attempts fails every call at once).
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)
SERVER_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    # Without this, a second server could silently share a port already in use.
    ("grpc.so_reuseport", 0),
)

# The one table from gRPC status codes to vastrpc exceptions. UNAVAILABLE is resolved by
# the caller's side: the control service or a worker.
_STATUS_ERRORS: dict[grpc.StatusCode, type[VastrpcError]] = {
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: AuthenticationError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: DefinitionError,
    grpc.StatusCode.FAILED_PRECONDITION: DeploymentError,
    grpc.StatusCode.DATA_LOSS: BundleError,
    grpc.StatusCode.DEADLINE_EXCEEDED: CallTimeoutError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: WorkerUnavailableError,
}


def error_from_rpc(
    err: grpc.RpcError, *, unavailable: type[VastrpcError] = ControlUnavailableError, target: str = ""
) -> VastrpcError:
    """Translate a failed RPC into the matching vastrpc exception."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else None) or str(code)
    where = f" at {target}" if target else ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return unavailable(f"cannot reach the service{where}: {details}")
    if code == grpc.StatusCode.UNAUTHENTICATED and unavailable is ControlUnavailableError:
        # The control service refused the API key: say where a client takes it from.
        details = (
            f"the control service{where} refused this client's API key ({details}): pass its key with --api-key "
            "or VASTRPC_API_KEY (Deployment(api_key=...) in Python); the embedded service keeps its key in "
            "HOME/api_key"
        )
    return _STATUS_ERRORS.get(code, ControlServiceError)(details)


def tls_failure(
    err: grpc.RpcError, target: str, tls: TlsFiles | None, *, what: str = "the control service"
) -> VastrpcError | None:
    """The TLS problem behind a failed connection, explained, or None when it was not one.

    A TLS mismatch never heals by retrying, so callers raise this at once instead of
    waiting out their timeout. The client sees the server's side only as a closed socket
    right after connecting: with TLS on, the server refused this client's certificate
    (mutual TLS); in plaintext, the server expected TLS.
    """
    if not hasattr(err, "code") or err.code() != grpc.StatusCode.UNAVAILABLE:
        return None
    details = err.details() or ""
    lower = details.lower()
    if "handshake" in lower or "ssl_error" in lower or "certificate" in lower:
        trusted = f"the CA in {tls.ca_file}" if tls is not None and tls.ca_file else "the system's root CAs"
        return ControlUnavailableError(
            f"TLS handshake with {what} at {target} failed ({details}). This client trusts {trusted}: check "
            "that this CA signed the server's certificate and that the certificate names the host you dial; "
            "set VASTRPC_TLS_CA (--tls-ca) to the CA that did (HOME/tls/ca.pem for a service started with "
            "--tls auto). If the service does not serve TLS, unset VASTRPC_TLS_CA, VASTRPC_TLS_CERT and "
            "VASTRPC_TLS_KEY"
        )
    if "socket closed" not in lower:
        return None
    if tls is None:
        return ControlUnavailableError(
            f"{what} at {target} closed the connection at once: it serves TLS and this client speaks "
            "plaintext. Set VASTRPC_TLS_CA (--tls-ca) to the CA that signed its certificate (HOME/tls/ca.pem "
            "for a service started with --tls auto)"
        )
    presented = f"this client presents {tls.cert_file}" if tls.cert_file else "this client presents none"
    return AuthenticationError(
        f"{what} at {target} refused the TLS connection during the handshake: it requires a client "
        f"certificate signed by a CA it trusts (mutual TLS), and {presented}. Set VASTRPC_TLS_CERT and "
        "VASTRPC_TLS_KEY (--tls-cert, --tls-key) to a certificate and key signed by the CA the service was "
        "given with --tls-ca"
    )


def channel(address: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.aio.Channel:
    """A grpc.aio channel with the shared options: TLS with ``credentials``, else plaintext."""
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=list(CHANNEL_OPTIONS))
    return grpc.aio.secure_channel(address, credentials, options=list(CHANNEL_OPTIONS))


def sync_channel(address: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    """A blocking channel with the shared options (the command line's): TLS with ``credentials``, else plaintext."""
    if credentials is None:
        return grpc.insecure_channel(address, options=list(CHANNEL_OPTIONS))
    return grpc.secure_channel(address, credentials, options=list(CHANNEL_OPTIONS))


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata that presents ``token``."""
    return ((AUTH_HEADER, f"Bearer {token}"),)


def token_from_metadata(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The bearer token in call metadata, or an empty string."""
    for key, value in metadata or ():
        if key == AUTH_HEADER and isinstance(value, str) and value.startswith("Bearer "):
            return value[7:]
    return ""


def tokens_equal(a: str, b: str) -> bool:
    """Compare two secrets in constant time."""
    return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())


# Health checks stay open so that load balancers and grpcurl can probe without a key.
_OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects every call whose bearer token ``authorize(method, token)`` refuses, before any handler runs.

    The rejecting handler never reads the request stream, so nothing a caller sent is
    deserialised, let alone unpickled.
    """

    def __init__(self, authorize: Callable[[str, str], bool]) -> None:
        self._authorize = authorize

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        if method.startswith(_OPEN_PREFIXES):
            return _parsing_handler(handler)
        if self._authorize(method, token_from_metadata(handler_call_details.invocation_metadata)):
            return _parsing_handler(handler)
        return _rejecting_handler(handler)


def _parsing_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The same handler, parsing its requests itself: a frame that is no such message answers INTERNAL.

    gRPC would answer UNKNOWN ("Unexpected DecodeError"), which tells a client nothing about
    whose fault it was; the contract (RELIABILITY.md) promises INTERNAL and says why.
    """
    parse = handler.request_deserializer
    if parse is None:
        return handler
    message_type = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
    name = message_type.full_name if message_type is not None else "request"

    async def one(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            return parse(raw)
        except DecodeError as exc:
            await context.abort(grpc.StatusCode.INTERNAL, f"a frame of this call is not a valid {name}: {exc}")

    async def many(raws: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        # Parsed here rather than through ``one``: a stream of a thousand workers' heartbeats
        # passes every message through this loop.
        async for raw in raws:
            try:
                message = parse(raw)
            except DecodeError as exc:
                await context.abort(grpc.StatusCode.INTERNAL, f"a frame of this call is not a valid {name}: {exc}")
            yield message

    if handler.request_streaming:
        inner = handler.stream_stream if handler.response_streaming else handler.stream_unary

        async def requests(raw: Any, context: grpc.aio.ServicerContext) -> Any:
            return many(raw, context)

    else:
        inner = handler.unary_stream if handler.response_streaming else handler.unary_unary
        requests = one

    if handler.response_streaming and inspect.isasyncgenfunction(inner):

        async def streamed(raw: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for response in inner(await requests(raw, context), context):
                yield response

        behavior: Callable[..., Any] = streamed
    else:

        async def behavior(raw: Any, context: grpc.aio.ServicerContext) -> Any:
            return await inner(await requests(raw, context), context)

    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    # A handler may yield a message already serialised (vastrpc._packed): it is sent as it is.
    return make(behavior, response_serializer=send_raw(handler.response_serializer))


def _rejecting_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def reject(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid token in 'authorization: Bearer ...'")

    # Rebuild a handler of the same shape without deserialisers: a request that arrives
    # anyway stays raw bytes.
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(reject)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(reject)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(reject)
    return grpc.unary_unary_rpc_method_handler(reject)


# Reflection v1 (what newer grpcurl and Postman ask for first) has v1alpha's messages under another package.
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
_V1ALPHA = ".grpc.reflection.v1alpha."


def _serve_reflection(names: list[str], server: grpc.aio.Server) -> None:
    """Serve server reflection as v1 and v1alpha: one servicer, the same messages on the wire."""
    _add_reflection_v1_descriptor()
    servicer = reflection.aio.ReflectionServicer([*names, reflection.SERVICE_NAME, REFLECTION_V1])
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    info = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": info}),)
    )


def _add_reflection_v1_descriptor() -> None:
    """Put grpc/reflection/v1/reflection.proto in the default pool (v1alpha's, renamed) so reflection describes it."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName("grpc/reflection/v1/reflection.proto")
        return  # added already (another server of this process), or shipped by a newer grpcio-reflection
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = "grpc/reflection/v1/reflection.proto", "grpc.reflection.v1"
    proto.options.Clear()
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(_V1ALPHA, ".grpc.reflection.v1.")
    for method in proto.service[0].method:
        method.input_type = method.input_type.replace(_V1ALPHA, ".grpc.reflection.v1.")
        method.output_type = method.output_type.replace(_V1ALPHA, ".grpc.reflection.v1.")
    pool.Add(proto)


async def start_server(
    address: str,
    register: Callable[[grpc.aio.Server], Iterable[str]],
    *,
    authorize: Callable[[str, str], bool],
    enable_reflection: bool = True,
    tls: TlsFiles | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Start a grpc.aio server with auth, health checking and (optionally) reflection.

    Args:
        address: ``host:port`` to bind; port 0 picks a free one.
        register: Adds the servicers to the server and returns their full service names.
        authorize: ``(method, token) -> allowed``.
        enable_reflection: Serve gRPC server reflection (for grpcurl).
        tls: Serve TLS (mutual TLS when it requires client certificates); plaintext when None.
        interceptors: More interceptors, run before the auth check (they see refused calls too).

    Returns:
        The started server, the bound port, and its health servicer (all services SERVING).
    """
    server = grpc.aio.server(interceptors=[*interceptors, AuthInterceptor(authorize)], options=list(SERVER_OPTIONS))
    names = list(register(server))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if enable_reflection:
        _serve_reflection([*names, health.SERVICE_NAME], server)
    if tls is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, tls.server_credentials())
    if port == 0:
        raise OSError(f"cannot listen on {address}: address in use or not available")
    await server.start()
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port, health_servicer
