"""The bearer-token check both transports (gRPC metadata, HTTP header) share: `Bearer <token>` exactly (the scheme
case-insensitive, as RFC 6750 reads it); a bare token is refused."""

from __future__ import annotations

import hmac


def bearer_authorized(header: bytes, tokens: list[bytes]) -> bool:
    """Whether an `authorization` value carries one of `tokens`."""
    scheme, _, given = header.partition(b" ")
    if scheme.lower() != b"bearer" or not given:
        return False
    # Compare against every token, in constant time each, so timing reveals neither match nor position.
    matches = [hmac.compare_digest(given, token) for token in tokens]
    return any(matches)
