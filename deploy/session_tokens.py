"""The `session_token` a public endpoint writes into its clients' requests, derived from who the client is.

The orchestrator knows a client by its `session_token`: a session belongs to the token that opened it, and its
per-client bounds (sessions held, its share of the answer cache) are per token. An endpoint that serves clients it
knows (the front door: an API key's name or a certificate's CN; the gateway: a browser's address) gives each the
token HMAC-SHA256(secret, identity), so every request of one client carries one token and no client can make up
another's. The secret is random per process unless given: replicas behind one balancer share it through a file.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets


class SessionTokens:
    """`tokens(identity)`: the identity's `session_token`, URL-safe, 32 characters, the same for the life of the
    secret. Nothing is kept per identity (a public endpoint meets identities without bound)."""

    def __init__(self, secret: bytes | None = None):
        if secret is not None and len(secret) < 16:
            raise ValueError(f"the session secret has {len(secret)} bytes; give at least 16 (a file of random bytes: "
                             "`head -c 32 /dev/urandom > session.secret`)")
        self._secret = secret if secret is not None else secrets.token_bytes(32)

    def __call__(self, identity: str) -> str:
        mac = hmac.new(self._secret, identity.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode()[:32]
