"""The baselines: a bare grpc.aio server, run as its own process, with two methods.

- ``/bench.Echo/Echo``: unary echo of a protobuf message (``CallData``), the per-call baseline.
- ``/bench.Echo/Raw``: unary echo of raw bytes through a generic handler (no protobuf on either
  side), the second per-call baseline: what a unary call costs with nothing but gRPC.
- ``/bench.Echo/Stream``: a long-lived bidirectional stream of raw bytes (no protobuf) for bulk
  transfer: the client sends one payload as chunks followed by an empty message; the server keeps
  the chunks and, at the empty message, sends them back followed by an empty message. Store and
  forward, like a call whose function needs its whole argument before it returns it.
- ``/bench.Echo/Beats``: a long-lived bidirectional stream echoing each protobuf message
  (``CallData``) as it comes: the baseline of messages on a stream, as heartbeats on a
  HeartbeatStream.

Prints its port on stdout; stops when its stdin closes.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import grpc

from vastrpc.api.v1 import worker_pb2

METHOD = "/bench.Echo/Echo"
RAW_METHOD = "/bench.Echo/Raw"
STREAM_METHOD = "/bench.Echo/Stream"
BEATS_METHOD = "/bench.Echo/Beats"


async def main() -> None:
    async def echo(request: worker_pb2.CallData, context: grpc.aio.ServicerContext) -> worker_pb2.CallData:
        return request

    async def echo_raw(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    async def stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        parts: list[bytes] = []
        async for chunk in requests:
            if chunk:
                parts.append(chunk)
                continue
            for part in parts:
                yield part
            yield b""
            parts = []

    async def beats(
        requests: AsyncIterator[worker_pb2.CallData], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.CallData]:
        async for request in requests:
            yield request

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                echo,
                request_deserializer=worker_pb2.CallData.FromString,
                response_serializer=worker_pb2.CallData.SerializeToString,
            ),
            "Raw": grpc.unary_unary_rpc_method_handler(echo_raw),  # raw bytes both ways
            "Stream": grpc.stream_stream_rpc_method_handler(stream),  # raw bytes both ways
            "Beats": grpc.stream_stream_rpc_method_handler(
                beats,
                request_deserializer=worker_pb2.CallData.FromString,
                response_serializer=worker_pb2.CallData.SerializeToString,
            ),
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    await server.stop(0)


if __name__ == "__main__":
    asyncio.run(main())
