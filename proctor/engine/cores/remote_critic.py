"""A Critic in another proctor server, used by GenerateTriples when `teacher.critic` is an address: reached through
the client library, with the TLS and bearer token of `teacher.remote_critic`."""

from __future__ import annotations

from collections.abc import Sequence

from proctor.clients.critic import AsyncCriticClient, triple_request
from proctor.clients.streaming import Credentials
from proctor.engine.config import ConfigError, RemoteCriticConfig
from proctor.engine.errors import ItemError
from proctor.engine.skd.relations import RELATIONS
from proctor.engine.skd.triples import Judgement

# A remote status that retrying can help keeps its code; any other (a refused token, a refused item) is a
# precondition of this server's configuration, not retryable.
_RETRYABLE = {4: "DEADLINE_EXCEEDED", 8: "RESOURCE_EXHAUSTED", 14: "UNAVAILABLE"}


def credentials(config: RemoteCriticConfig) -> Credentials:
    """The client library's credentials, every file read now: a wrong path is a start-up error, not every event's."""
    try:
        return Credentials.from_files(config.ca_file, config.cert_file, config.key_file, config.token_env)
    except ValueError as exc:
        raise ConfigError(f"teacher.remote_critic.{exc}") from None


class RemoteCritic:
    def __init__(self, target: str, config: RemoteCriticConfig) -> None:
        self.target = target
        self.config = config
        self._credentials = credentials(config)  # a missing token is a start-up error, not every event's
        self._client: AsyncCriticClient | None = None

    def _connected(self) -> AsyncCriticClient:
        if self._client is None:  # created lazily, inside the server's event loop
            self._client = AsyncCriticClient(
                self.target, credentials=self._credentials, timeout_s=self.config.timeout_s
            )
        return self._client

    async def judge_many(self, triples: Sequence[tuple[str, str, str, int]]) -> list[Judgement]:
        """All triples of one event on one Classify stream."""
        requests = [
            triple_request(str(i), head, RELATIONS[relation].enum, tail, seed=seed)
            for i, (head, relation, tail, seed) in enumerate(triples)
        ]
        results = await self._connected().classify(requests)
        out = []
        for request in requests:
            result = results[request.id]  # the client answers every id, a failed call's with its status
            if result.HasField("error"):
                raise ItemError(
                    f"the critic at {self.target} could not score a triple: {result.error.message}",
                    code=_RETRYABLE.get(result.error.code, "FAILED_PRECONDITION"),
                )
            out.append(Judgement(result.score, result.cutoff))
        return out

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
