"""A backend the gateway calls over gRPC (the analytics server, the local agent)."""

from __future__ import annotations

import grpc


class Backend:
    """A gRPC channel that opens on first use: inside the server's event loop,
    which is not the one running when the app is built."""

    def __init__(self) -> None:
        self._channel: grpc.aio.Channel | None = None

    def _open(self) -> grpc.aio.Channel:
        raise NotImplementedError

    @property
    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = self._open()
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
