"""The shared gRPC server layer against a real control service: reflection v1 and v1alpha, garbage frames."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from vastrpc._grpc import bearer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


async def _reflect(
    channel: grpc.aio.Channel, service: str, request: reflection_pb2.ServerReflectionRequest, token: str
) -> reflection_pb2.ServerReflectionResponse:
    """One request on ``service``'s ServerReflectionInfo stream (v1 and v1alpha share their messages)."""
    info = channel.stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    call = info(metadata=bearer(token), timeout=10)
    await call.write(request)
    await call.done_writing()
    response = await call.read()
    call.cancel()
    return response


@pytest.mark.parametrize("service", ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"])
async def test_reflection_is_served_as_v1_and_v1alpha(control_service, service: str) -> None:
    async with grpc.aio.insecure_channel(control_service.address) as channel:
        # Reflection needs the key, as every method. Refused as the call opens: nothing is written
        # first (a write racing the refusal would end the call INTERNAL on this side, not as refused).
        call = channel.stream_stream(f"/{service}/ServerReflectionInfo")(metadata=bearer(""), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call.read()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

        key = control_service.api_key
        listed = await _reflect(channel, service, reflection_pb2.ServerReflectionRequest(list_services=""), key)
        names = {s.name for s in listed.list_services_response.service}
        assert {
            "vastrpc.api.v1.ControlService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= names
        # Every service listed resolves to its file, the reflection services' own included.
        for name in names:
            found = await _reflect(
                channel, service, reflection_pb2.ServerReflectionRequest(file_containing_symbol=name), key
            )
            assert found.HasField("file_descriptor_response"), (name, found.error_response)
            files = [
                descriptor_pb2.FileDescriptorProto.FromString(b)
                for b in found.file_descriptor_response.file_descriptor_proto
            ]
            assert any(f"{f.package}.{s.name}" == name for f in files for s in f.service), name


async def test_garbage_frames_answer_internal_naming_the_message(control_service) -> None:
    garbage = b"\xff\xfe garbage \x00\x01"
    key = bearer(control_service.api_key)
    async with grpc.aio.insecure_channel(control_service.address) as channel:
        listing = channel.unary_unary("/vastrpc.api.v1.ControlService/ListDeployments")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await listing(garbage, metadata=key, timeout=5)
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert "not a valid vastrpc.api.v1.ListDeploymentsRequest" in info.value.details()

        upload = channel.stream_unary("/vastrpc.api.v1.ControlService/UploadBundle")
        call = upload(metadata=key, timeout=5)
        await call.write(garbage)
        await call.done_writing()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert "not a valid vastrpc.api.v1.UploadBundleRequest" in info.value.details()

        # Refused before anything is parsed: the key is checked first, garbage or not.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await listing(garbage, timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # And the service answers well-formed calls as before.
        assert await listing(b"", metadata=key, timeout=5) is not None
