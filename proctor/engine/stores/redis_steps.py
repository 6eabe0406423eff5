"""The training step counts of engine/rewards/steps.py in Redis (`reward.steps.store: redis://host:port/db`), so
replicas on several machines share each run's count.

A run is one hash, `proctor:steps:run:<key>` = {count, rate}; one Lua script reads it, checks the rate and moves the
count, atomically in Redis. The client retries a call whose reply was lost (a timeout, a restarted Redis); so that a
retried call counts once, each counting call names an attempt key that keeps its answer for a minute, and the retry
gets that answer back. When Redis stays unreachable the item fails with UNAVAILABLE, never with an uncounted T;
for two seconds after such a failure items fail at once, so an outage does not hold every rollout for the client's
timeouts and retries in turn.
Counts live as long as Redis keeps them: run it with an append-only file fsynced on every write (deploy/kubernetes).
"""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from proctor.engine.config import ConfigError
from proctor.engine.errors import ItemError

_PREFIX = "proctor:steps:"
_ATTEMPT_TTL_S = 60  # longer than the client's retries of one call take
_TAKE = """
local answered = redis.call('GET', KEYS[2])
if answered then return {tonumber(answered), 0} end
local state = redis.call('HMGET', KEYS[1], 'count', 'rate')
local count = tonumber(state[1]) or 0
local rate = tonumber(state[2]) or 0
local asked = tonumber(ARGV[1])
if rate ~= 0 and rate ~= asked then return {count, rate} end
if ARGV[2] == '1' then
  redis.call('HINCRBY', KEYS[1], 'count', 1)
  redis.call('HSET', KEYS[1], 'rate', asked)
  redis.call('SET', KEYS[2], count, 'EX', ARGV[3])
elseif rate == 0 then
  redis.call('HSET', KEYS[1], 'rate', asked)
end
return {count, rate}
"""


def _shown(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisStepStore:
    """A StepStore in Redis. `connect` checks Redis answers before the server starts."""

    def __init__(self, client: Any, url: str, cooldown_s: float = 2.0) -> None:
        self._client = client
        self._take = client.register_script(_TAKE)
        self.url = _shown(url)
        self._cooldown_s = cooldown_s
        self._failed_at = -cooldown_s
        self._failure = ""

    @classmethod
    def connect(cls, url: str, timeout_s: float = 1.0, cooldown_s: float = 2.0) -> RedisStepStore:
        try:
            import redis
            from redis.backoff import ExponentialBackoff
            from redis.retry import Retry
        except ImportError:
            raise ConfigError("reward.steps.store: needs the Redis client: pip install 'proctor[redis]'") from None
        client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # Worst case on a partition: 3 tries of timeout_s, then the cool-down (a lost reply is retried, once
            # counted: the attempt key).
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=2),
        )
        try:
            client.ping()
        except redis.RedisError as exc:
            client.close()
            raise ConfigError(f"reward.steps.store: Redis at {_shown(url)} does not answer ({exc})") from None
        return cls(client, url, cooldown_s)

    def take(self, key: str, per_step: int, observe_only: bool) -> tuple[int, int]:
        import redis

        if time.monotonic() - self._failed_at < self._cooldown_s:
            raise self._unavailable(self._failure)
        attempt = f"{_PREFIX}attempt:{uuid.uuid4().hex}"
        try:
            count, rate = self._take(
                keys=[f"{_PREFIX}run:{key}", attempt], args=[per_step, 0 if observe_only else 1, _ATTEMPT_TTL_S]
            )
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._failure, self._failed_at = str(exc), time.monotonic()
            raise self._unavailable(self._failure) from None
        except redis.RedisError as exc:
            raise ItemError(f"the step store (Redis at {self.url}) failed: {exc}", code="INTERNAL") from None
        return int(count), int(rate)

    def close(self) -> None:
        self._client.close()

    def _unavailable(self, failure: str) -> ItemError:
        return ItemError(
            f"the step store (Redis at {self.url}) does not answer ({failure}); this rollout got no training step",
            code="UNAVAILABLE",
        )
