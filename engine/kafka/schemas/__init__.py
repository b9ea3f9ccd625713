"""The schemas of every API the listener serves, and the table that finds them.

One module per API group; each declares a request and a response :class:`Message` per
API, for the versions served only (engine.kafka.codec says how they read)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.kafka.codec import Message
from engine.kafka.schemas.cluster import (
    API_VERSIONS_REQUEST,
    API_VERSIONS_RESPONSE,
    METADATA_REQUEST,
    METADATA_RESPONSE,
)
from engine.kafka.schemas.consumer_groups import (
    DELETE_GROUPS_REQUEST,
    DELETE_GROUPS_RESPONSE,
    DESCRIBE_GROUPS_REQUEST,
    DESCRIBE_GROUPS_RESPONSE,
    HEARTBEAT_REQUEST,
    HEARTBEAT_RESPONSE,
    JOIN_GROUP_REQUEST,
    JOIN_GROUP_RESPONSE,
    LEAVE_GROUP_REQUEST,
    LEAVE_GROUP_RESPONSE,
    LIST_GROUPS_REQUEST,
    LIST_GROUPS_RESPONSE,
    OFFSET_COMMIT_REQUEST,
    OFFSET_COMMIT_RESPONSE,
    OFFSET_FETCH_REQUEST,
    OFFSET_FETCH_RESPONSE,
    SYNC_GROUP_REQUEST,
    SYNC_GROUP_RESPONSE,
)
from engine.kafka.schemas.fetch import (
    FETCH_REQUEST,
    FETCH_RESPONSE,
    LIST_OFFSETS_REQUEST,
    LIST_OFFSETS_RESPONSE,
)
from engine.kafka.schemas.groups import FIND_COORDINATOR_REQUEST, FIND_COORDINATOR_RESPONSE
from engine.kafka.schemas.produce import (
    INIT_PRODUCER_ID_REQUEST,
    INIT_PRODUCER_ID_RESPONSE,
    PRODUCE_REQUEST,
    PRODUCE_RESPONSE,
)
from engine.kafka.schemas.sasl import (
    SASL_AUTHENTICATE_REQUEST,
    SASL_AUTHENTICATE_RESPONSE,
    SASL_HANDSHAKE_REQUEST,
    SASL_HANDSHAKE_RESPONSE,
)


@dataclass(frozen=True)
class Api:
    """One API the listener serves: its key, name, versions, request and response."""

    key: int
    name: str
    request: Message
    response: Message

    @property
    def min_version(self) -> int:
        return self.request.versions.low

    @property
    def max_version(self) -> int:
        return self.request.versions.high


def _api(request: Message, response: Message) -> Api:
    assert request.api_key == response.api_key and request.versions == response.versions
    return Api(request.api_key, request.name.removesuffix("Request"), request, response)


#: Every API served, by key (Kafka's ApiKeys numbers).
APIS: dict[int, Api] = {
    api.key: api
    for api in (
        _api(PRODUCE_REQUEST, PRODUCE_RESPONSE),
        _api(FETCH_REQUEST, FETCH_RESPONSE),
        _api(LIST_OFFSETS_REQUEST, LIST_OFFSETS_RESPONSE),
        _api(METADATA_REQUEST, METADATA_RESPONSE),
        _api(OFFSET_COMMIT_REQUEST, OFFSET_COMMIT_RESPONSE),
        _api(OFFSET_FETCH_REQUEST, OFFSET_FETCH_RESPONSE),
        _api(FIND_COORDINATOR_REQUEST, FIND_COORDINATOR_RESPONSE),
        _api(JOIN_GROUP_REQUEST, JOIN_GROUP_RESPONSE),
        _api(HEARTBEAT_REQUEST, HEARTBEAT_RESPONSE),
        _api(LEAVE_GROUP_REQUEST, LEAVE_GROUP_RESPONSE),
        _api(SYNC_GROUP_REQUEST, SYNC_GROUP_RESPONSE),
        _api(DESCRIBE_GROUPS_REQUEST, DESCRIBE_GROUPS_RESPONSE),
        _api(LIST_GROUPS_REQUEST, LIST_GROUPS_RESPONSE),
        _api(SASL_HANDSHAKE_REQUEST, SASL_HANDSHAKE_RESPONSE),
        _api(API_VERSIONS_REQUEST, API_VERSIONS_RESPONSE),
        _api(INIT_PRODUCER_ID_REQUEST, INIT_PRODUCER_ID_RESPONSE),
        _api(DELETE_GROUPS_REQUEST, DELETE_GROUPS_RESPONSE),
        _api(SASL_AUTHENTICATE_REQUEST, SASL_AUTHENTICATE_RESPONSE),
    )
}

PRODUCE = 0
FETCH = 1
LIST_OFFSETS = 2
METADATA = 3
OFFSET_COMMIT = 8
OFFSET_FETCH = 9
FIND_COORDINATOR = 10
JOIN_GROUP = 11
HEARTBEAT = 12
LEAVE_GROUP = 13
SYNC_GROUP = 14
DESCRIBE_GROUPS = 15
LIST_GROUPS = 16
SASL_HANDSHAKE = 17
API_VERSIONS = 18
INIT_PRODUCER_ID = 22
SASL_AUTHENTICATE = 36
DELETE_GROUPS = 42
#: The group coordinator's APIs (engine.kafka.group_coordinator).
GROUP_APIS = frozenset({OFFSET_COMMIT, OFFSET_FETCH, JOIN_GROUP, HEARTBEAT, LEAVE_GROUP,
                        SYNC_GROUP, DESCRIBE_GROUPS, LIST_GROUPS, DELETE_GROUPS})  # fmt: skip
