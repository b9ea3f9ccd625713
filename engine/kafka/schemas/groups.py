"""FindCoordinator (FindCoordinatorRequest.json, FindCoordinatorResponse.json).

Key type 0 is a group id, 1 a transactional id (v0 has no key type: a group); v4+
asks for several keys at once (KIP-699)."""

from __future__ import annotations

from engine.kafka.codec import F, Type, message

T = Type

FIND_COORDINATOR_REQUEST = message("FindCoordinatorRequest", 10, "0-4", "3+", [
    F("key", T.STRING, "0-3"),
    F("key_type", T.INT8, "1+"),
    F("coordinator_keys", T.STRING, "4+", array=True),
])  # fmt: skip

FIND_COORDINATOR_RESPONSE = message("FindCoordinatorResponse", 10, "0-4", "3+", [
    F("throttle_time_ms", T.INT32, "1+"),
    F("error_code", T.INT16, "0-3"),
    F("error_message", T.STRING, "1-3", nullable="1-3"),
    F("node_id", T.INT32, "0-3"),
    F("host", T.STRING, "0-3"),
    F("port", T.INT32, "0-3"),
    F("coordinators", [
        F("key", T.STRING, "4+"),
        F("node_id", T.INT32, "4+"),
        F("host", T.STRING, "4+"),
        F("port", T.INT32, "4+"),
        F("error_code", T.INT16, "4+"),
        F("error_message", T.STRING, "4+", nullable="4+"),
    ], "4+"),
])  # fmt: skip
