"""The baseline: a bare grpc.aio unary echo server (protobuf messages), run as its own process."""

from __future__ import annotations

import asyncio
import sys

import grpc

from vastrpc.api.v1 import worker_pb2

METHOD = "/bench.Echo/Echo"


async def main() -> None:
    async def echo(request: worker_pb2.CallData, context: grpc.aio.ServicerContext) -> worker_pb2.CallData:
        return request

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                echo,
                request_deserializer=worker_pb2.CallData.FromString,
                response_serializer=worker_pb2.CallData.SerializeToString,
            )
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
