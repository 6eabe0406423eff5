"""The bearer-token rule both doors (gRPC metadata, HTTP headers) share, so that a request passes or fails the same
way on either: exactly one `authorization` field; its value, without the spaces and tabs around it, is `Bearer`
(the scheme in any case, RFC 9110 §11.1), one space, and a token compared exactly (in constant time).

- Two `authorization` fields are refused whatever they hold: which one counts would otherwise be up to each door
  (the last one won on both, so "wrong, right" passed and "right, wrong" did not).
- Spaces and tabs around the value are not part of it: HTTP/1.1 servers strip them before the application sees the
  header (RFC 9110 §5.5) and HTTP/2, which carries gRPC, forbids them (RFC 9113 §8.2.1). Stripping them on both
  doors is the one rule both can keep: `Bearer <token> ` passes on both. Inside the value nothing is forgiven:
  two spaces after the scheme, a bare token or another scheme is refused.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

_OWS = b" \t"


def authorization_values(fields: Iterable[tuple[str | bytes, str | bytes]]) -> list[bytes]:
    """Every `authorization` value among gRPC's invocation metadata or ASGI's headers (both lower-case the names)."""
    return [v.encode() if isinstance(v, str) else v for k, v in fields if k in ("authorization", b"authorization")]


def bearer_authorized(values: list[bytes], tokens: list[bytes]) -> bool:
    """Whether the request's `authorization` values (all of them) carry one of `tokens` by the rule above."""
    if len(values) != 1:
        return False
    scheme, _, given = values[0].strip(_OWS).partition(b" ")
    if scheme.lower() != b"bearer" or not given:
        return False
    # Compare against every token, in constant time each, so timing reveals neither match nor position.
    matches = [hmac.compare_digest(given, token) for token in tokens]
    return any(matches)
