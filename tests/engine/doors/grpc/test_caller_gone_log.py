"""A caller that cancels mid-stream is one INFO line in the server's log, not a gRPC traceback at ERROR; every other
record of gRPC's passes as it was."""

from __future__ import annotations

import logging

import pytest

from proctor.engine.config import Config, RewardConfig, ServerConfig
from tests.conftest import started

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_write_to_a_caller_that_went_away_is_an_info_line(caplog: pytest.LogCaptureFixture) -> None:
    server = await started(
        Config(server=ServerConfig(port=0, metrics_port=-1), reward=RewardConfig(model="", mode="rules", total_steps=9))
    )
    try:
        grpc_log = logging.getLogger("grpc._cython.cygrpc")
        with caplog.at_level(logging.INFO):
            # what grpc's _handle_exceptions logs (server.pyx.pxi) when the write loses the race with the cancel
            grpc_log.error("ExecuteBatchError raised in core by servicer method [/proctor.v1.RewardModel/Reward]")
            grpc_log.error("Unexpected [ValueError] raised by servicer method [/proctor.v1.RewardModel/Reward]")
        records = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
        assert records == [
            (
                "proctor.engine.doors.grpc.server",
                "INFO",
                "a caller went away while its replies were being sent [/proctor.v1.RewardModel/Reward]",
            ),
            (
                "grpc._cython.cygrpc",
                "ERROR",
                "Unexpected [ValueError] raised by servicer method [/proctor.v1.RewardModel/Reward]",
            ),
        ]
    finally:
        await server.drain(grace_s=1)
