"""gRPC (grpcio client and server, not pymesh code) through outbound → inbound sidecars."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from tests.helpers import mesh_for, sidecar


def _ident(b: bytes) -> bytes:
    return b


async def _unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if request == b"fail":
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no can do")
    if request == b"slow":
        await asyncio.sleep(2)
    return b"hello " + request


async def _server_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for i in range(int(request)):
        yield b"item %d" % i


async def _client_stream(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> bytes:
    parts = [r async for r in requests]
    return b"+".join(parts)


async def _bidi(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    async for r in requests:
        yield r.upper()


def _handlers() -> grpc.GenericRpcHandler:
    kw = {"request_deserializer": _ident, "response_serializer": _ident}
    return grpc.method_handlers_generic_handler(
        "demo.Greeter",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary, **kw),
            "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream, **kw),
            "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream, **kw),
            "Bidi": grpc.stream_stream_rpc_method_handler(_bidi, **kw),
        },
    )


@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_grpc_all_four_kinds_errors_and_deadlines_through_the_mesh() -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        mesh0 = mesh_for({"greeter": ([(50051, "grpc")], [])})
        async with sidecar(mesh0, "greeter", app=("127.0.0.1", port)) as inbound:
            mesh = mesh_for({"greeter": ([(50051, "grpc")], [inbound.inbound_address])})
            async with sidecar(mesh, "greeter") as outbound:
                host, oport = outbound.outbound_address
                async with grpc.aio.insecure_channel(
                    f"{host}:{oport}", options=[("grpc.default_authority", "greeter:50051")]
                ) as ch:
                    kw = {"request_serializer": _ident, "response_deserializer": _ident}
                    unary = ch.unary_unary("/demo.Greeter/Unary", **kw)
                    assert await unary(b"mesh", timeout=5) == b"hello mesh"
                    stream = ch.unary_stream("/demo.Greeter/ServerStream", **kw)
                    items = [m async for m in stream(b"5", timeout=5)]
                    assert items == [b"item %d" % i for i in range(5)]
                    cstream = ch.stream_unary("/demo.Greeter/ClientStream", **kw)

                    async def parts() -> AsyncIterator[bytes]:
                        for p in (b"a", b"b", b"c"):
                            yield p

                    assert await cstream(parts(), timeout=5) == b"a+b+c"
                    bidi = ch.stream_stream("/demo.Greeter/Bidi", **kw)
                    echoed = [m async for m in bidi(parts(), timeout=5)]
                    assert echoed == [b"A", b"B", b"C"]
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await unary(b"fail", timeout=5)
                    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                    assert err.value.details() == "no can do"
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await unary(b"slow", timeout=0.3)
                    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                # through http_proxy: grpcio sends CONNECT greeter:50051, then h2 in the tunnel
                async with grpc.aio.insecure_channel(
                    "greeter:50051", options=[("grpc.http_proxy", f"http://{host}:{oport}")]
                ) as ch3:
                    via_proxy = ch3.unary_unary(
                        "/demo.Greeter/Unary",
                        request_serializer=_ident,
                        response_deserializer=_ident,
                    )
                    assert await via_proxy(b"tunnel", timeout=5) == b"hello tunnel"
                text = outbound.registry.render().decode()
                assert 'request_protocol="grpc"' in text
                assert 'grpc_response_status="0"' in text  # OK
                assert 'grpc_response_status="9"' in text  # FAILED_PRECONDITION, passed through
                # a name that is not in the mesh: a gRPC status, not an HTTP page
                async with grpc.aio.insecure_channel(
                    f"{host}:{oport}", options=[("grpc.default_authority", "nowhere:1")]
                ) as ch2:
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await ch2.unary_unary(
                            "/demo.Greeter/Unary",
                            request_serializer=_ident,
                            response_deserializer=_ident,
                        )(b"x", timeout=5)
                    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(0)
