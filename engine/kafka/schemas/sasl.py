"""SaslHandshake and SaslAuthenticate (SaslHandshake*.json, SaslAuthenticate*.json).

After a SaslHandshake v0 the client sends the mechanism's tokens bare (a 4-byte size,
then the token, no Kafka header) and gets the server's the same way; after a v1 it
wraps them in SaslAuthenticate requests (KIP-152)."""

from __future__ import annotations

from engine.kafka.codec import F, Type, message

T = Type

SASL_HANDSHAKE_REQUEST = message("SaslHandshakeRequest", 17, "0-1", "none", [
    F("mechanism", T.STRING),
])  # fmt: skip

SASL_HANDSHAKE_RESPONSE = message("SaslHandshakeResponse", 17, "0-1", "none", [
    F("error_code", T.INT16),
    F("mechanisms", T.STRING, array=True),
])  # fmt: skip

SASL_AUTHENTICATE_REQUEST = message("SaslAuthenticateRequest", 36, "0-2", "2+", [
    F("auth_bytes", T.BYTES),
])  # fmt: skip

SASL_AUTHENTICATE_RESPONSE = message("SaslAuthenticateResponse", 36, "0-2", "2+", [
    F("error_code", T.INT16),
    F("error_message", T.STRING, nullable="0+"),
    F("auth_bytes", T.BYTES),
    F("session_lifetime_ms", T.INT64, "1+"),
])  # fmt: skip
