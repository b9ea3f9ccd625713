"""ApiVersions and Metadata: what a client asks first (ApiVersions*.json, Metadata*.json)."""

from __future__ import annotations

from engine.kafka.codec import F, Type, message

T = Type

API_VERSIONS_REQUEST = message("ApiVersionsRequest", 18, "0-3", "3+", [
    F("client_software_name", T.STRING, "3+"),
    F("client_software_version", T.STRING, "3+"),
])  # fmt: skip

API_VERSIONS_RESPONSE = message("ApiVersionsResponse", 18, "0-3", "3+", [
    F("error_code", T.INT16),
    F("api_keys", [
        F("api_key", T.INT16),
        F("min_version", T.INT16),
        F("max_version", T.INT16),
    ]),
    F("throttle_time_ms", T.INT32, "1+"),
    F("supported_features", [
        F("name", T.STRING, "3+"),
        F("min_version", T.INT16, "3+"),
        F("max_version", T.INT16, "3+"),
    ], "3+", tag=0, tagged="3+"),
    F("finalized_features_epoch", T.INT64, "3+", default=-1, tag=1, tagged="3+"),
    F("finalized_features", [
        F("name", T.STRING, "3+"),
        F("max_version_level", T.INT16, "3+"),
        F("min_version_level", T.INT16, "3+"),
    ], "3+", tag=2, tagged="3+"),
    F("zk_migration_ready", T.BOOL, "3+", tag=3, tagged="3+"),
])  # fmt: skip

METADATA_REQUEST = message("MetadataRequest", 3, "0-12", "9+", [
    F("topics", [
        F("topic_id", T.UUID, "10+"),
        F("name", T.STRING, nullable="10+"),
    ], nullable="1+"),
    F("allow_auto_topic_creation", T.BOOL, "4+", default=True),
    F("include_cluster_authorized_operations", T.BOOL, "8-10"),
    F("include_topic_authorized_operations", T.BOOL, "8+"),
])  # fmt: skip

#: TopicAuthorizedOperations / ClusterAuthorizedOperations: not asked for.
AUTHORIZED_OPERATIONS_UNKNOWN = -(2**31)

METADATA_RESPONSE = message("MetadataResponse", 3, "0-12", "9+", [
    F("throttle_time_ms", T.INT32, "3+"),
    F("brokers", [
        F("node_id", T.INT32),
        F("host", T.STRING),
        F("port", T.INT32),
        F("rack", T.STRING, "1+", nullable="1+"),
    ]),
    F("cluster_id", T.STRING, "2+", nullable="2+"),
    F("controller_id", T.INT32, "1+", default=-1),
    F("topics", [
        F("error_code", T.INT16),
        F("name", T.STRING, nullable="12+"),
        F("topic_id", T.UUID, "10+"),
        F("is_internal", T.BOOL, "1+"),
        F("partitions", [
            F("error_code", T.INT16),
            F("partition_index", T.INT32),
            F("leader_id", T.INT32),
            F("leader_epoch", T.INT32, "7+", default=-1),
            F("replica_nodes", T.INT32, array=True),
            F("isr_nodes", T.INT32, array=True),
            F("offline_replicas", T.INT32, "5+", array=True),
        ]),
        F("topic_authorized_operations", T.INT32, "8+", default=AUTHORIZED_OPERATIONS_UNKNOWN),
    ]),
    F("cluster_authorized_operations", T.INT32, "8-10", default=AUTHORIZED_OPERATIONS_UNKNOWN),
])  # fmt: skip
