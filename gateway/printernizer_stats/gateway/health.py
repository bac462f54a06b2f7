"""`GET /health`: whether the gateway can answer, for load balancers and
container health checks. It asks the gRPC health service of each backend it
serves (the analytics server, the local agent) and answers 200 when every one
says SERVING, else 503 naming those that do not. It needs no credentials and
says nothing else."""

from __future__ import annotations

import asyncio

import grpc
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from grpc_health.v1 import health_pb2
from printernizer_stats.common.telemetry import grpc_client_interceptors

from .backend import Backend

HEALTH_TIMEOUT_SECONDS = 3.0


async def _serving(channel: grpc.aio.Channel) -> bool:
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    try:
        answer: health_pb2.HealthCheckResponse = await check(
            health_pb2.HealthCheckRequest(), timeout=HEALTH_TIMEOUT_SECONDS
        )
    except grpc.aio.AioRpcError:
        return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


class Plain(Backend):
    """A channel without TLS (the local agent's Unix socket), for its health only."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target

    def _open(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.target, interceptors=grpc_client_interceptors())


def health_router(analytics: Backend | None, agent: Backend | None) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/health", responses={503: {"description": "a backend is not serving"}})
    async def health() -> JSONResponse:
        """200 when every backend answers SERVING, else 503."""
        backends = {name: b for name, b in (("analytics", analytics), ("agent", agent)) if b is not None}
        states = await asyncio.gather(*(_serving(backend.channel) for backend in backends.values()))
        down = sorted(name for name, serving in zip(backends, states, strict=True) if not serving)
        if down:
            return JSONResponse({"status": "not serving", "down": down}, status_code=503)
        return JSONResponse({"status": "serving"})

    return router
