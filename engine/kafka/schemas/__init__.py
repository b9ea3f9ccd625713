"""The schemas of every API the listener serves, and the table that finds them.

One module per API group; each declares a request and a response :class:`Message` per
API, for the versions served only (engine.kafka.codec says how they read)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.kafka.codec import Message
from engine.kafka.schemas.admin import (
    ALTER_CONFIGS_REQUEST,
    ALTER_CONFIGS_RESPONSE,
    CREATE_PARTITIONS_REQUEST,
    CREATE_PARTITIONS_RESPONSE,
    CREATE_TOPICS_REQUEST,
    CREATE_TOPICS_RESPONSE,
    DELETE_RECORDS_REQUEST,
    DELETE_RECORDS_RESPONSE,
    DELETE_TOPICS_REQUEST,
    DELETE_TOPICS_RESPONSE,
    DESCRIBE_CLUSTER_REQUEST,
    DESCRIBE_CLUSTER_RESPONSE,
    DESCRIBE_CONFIGS_REQUEST,
    DESCRIBE_CONFIGS_RESPONSE,
    INCREMENTAL_ALTER_CONFIGS_REQUEST,
    INCREMENTAL_ALTER_CONFIGS_RESPONSE,
    OFFSET_FOR_LEADER_EPOCH_REQUEST,
    OFFSET_FOR_LEADER_EPOCH_RESPONSE,
)
from engine.kafka.schemas.cluster import (
    API_VERSIONS_REQUEST,
    API_VERSIONS_RESPONSE,
    METADATA_REQUEST,
    METADATA_RESPONSE,
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
from engine.kafka.schemas.transactions import (
    ADD_OFFSETS_TO_TXN_REQUEST,
    ADD_OFFSETS_TO_TXN_RESPONSE,
    ADD_PARTITIONS_TO_TXN_REQUEST,
    ADD_PARTITIONS_TO_TXN_RESPONSE,
    END_TXN_REQUEST,
    END_TXN_RESPONSE,
    TXN_OFFSET_COMMIT_REQUEST,
    TXN_OFFSET_COMMIT_RESPONSE,
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
        _api(FIND_COORDINATOR_REQUEST, FIND_COORDINATOR_RESPONSE),
        _api(SASL_HANDSHAKE_REQUEST, SASL_HANDSHAKE_RESPONSE),
        _api(API_VERSIONS_REQUEST, API_VERSIONS_RESPONSE),
        _api(INIT_PRODUCER_ID_REQUEST, INIT_PRODUCER_ID_RESPONSE),
        _api(SASL_AUTHENTICATE_REQUEST, SASL_AUTHENTICATE_RESPONSE),
        _api(CREATE_TOPICS_REQUEST, CREATE_TOPICS_RESPONSE),
        _api(DELETE_TOPICS_REQUEST, DELETE_TOPICS_RESPONSE),
        _api(DELETE_RECORDS_REQUEST, DELETE_RECORDS_RESPONSE),
        _api(OFFSET_FOR_LEADER_EPOCH_REQUEST, OFFSET_FOR_LEADER_EPOCH_RESPONSE),
        _api(DESCRIBE_CONFIGS_REQUEST, DESCRIBE_CONFIGS_RESPONSE),
        _api(ALTER_CONFIGS_REQUEST, ALTER_CONFIGS_RESPONSE),
        _api(CREATE_PARTITIONS_REQUEST, CREATE_PARTITIONS_RESPONSE),
        _api(INCREMENTAL_ALTER_CONFIGS_REQUEST, INCREMENTAL_ALTER_CONFIGS_RESPONSE),
        _api(DESCRIBE_CLUSTER_REQUEST, DESCRIBE_CLUSTER_RESPONSE),
        _api(ADD_PARTITIONS_TO_TXN_REQUEST, ADD_PARTITIONS_TO_TXN_RESPONSE),
        _api(ADD_OFFSETS_TO_TXN_REQUEST, ADD_OFFSETS_TO_TXN_RESPONSE),
        _api(END_TXN_REQUEST, END_TXN_RESPONSE),
        _api(TXN_OFFSET_COMMIT_REQUEST, TXN_OFFSET_COMMIT_RESPONSE),
    )
}

PRODUCE = 0
FETCH = 1
LIST_OFFSETS = 2
METADATA = 3
FIND_COORDINATOR = 10
SASL_HANDSHAKE = 17
API_VERSIONS = 18
INIT_PRODUCER_ID = 22
ADD_PARTITIONS_TO_TXN = 24
ADD_OFFSETS_TO_TXN = 25
END_TXN = 26
TXN_OFFSET_COMMIT = 28
SASL_AUTHENTICATE = 36
CREATE_TOPICS = 19
DELETE_TOPICS = 20
DELETE_RECORDS = 21
OFFSET_FOR_LEADER_EPOCH = 23
DESCRIBE_CONFIGS = 32
ALTER_CONFIGS = 33
CREATE_PARTITIONS = 37
INCREMENTAL_ALTER_CONFIGS = 44
DESCRIBE_CLUSTER = 60
