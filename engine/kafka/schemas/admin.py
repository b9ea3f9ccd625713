"""The admin APIs and OffsetForLeaderEpoch: CreateTopics, DeleteTopics, CreatePartitions,
DescribeConfigs, AlterConfigs, IncrementalAlterConfigs, DeleteRecords, DescribeCluster
(CreateTopicsRequest.json ... DescribeClusterResponse.json) and OffsetForLeaderEpoch
(OffsetForLeaderEpochRequest.json, OffsetForLeaderEpochResponse.json).

Each is served at the versions Kafka 4 serves (KIP-896 removed the oldest: CreateTopics
0-1, DeleteTopics 0, DescribeConfigs 0, OffsetForLeaderEpoch 0-1), which current
clients send: librdkafka 2.x asks for the older ones (CreateTopics 4, DeleteTopics 4,
DescribeConfigs 1, ...), kafka-python 3.x for the newest."""

from __future__ import annotations

from engine.kafka.codec import F, Type, message

T = Type

#: DescribeConfigs' and AlterConfigs' resource types (ConfigResource.Type).
RESOURCE_TOPIC = 2
RESOURCE_BROKER = 4

#: ClusterAuthorizedOperations: not asked for.
AUTHORIZED_OPERATIONS_UNKNOWN = -(2**31)

CREATE_TOPICS_REQUEST = message("CreateTopicsRequest", 19, "2-7", "5+", [
    F("topics", [
        F("name", T.STRING),
        F("num_partitions", T.INT32),
        F("replication_factor", T.INT16),
        F("assignments", [
            F("partition_index", T.INT32),
            F("broker_ids", T.INT32, array=True),
        ]),
        F("configs", [
            F("name", T.STRING),
            F("value", T.STRING, nullable="0+"),
        ]),
    ]),
    F("timeout_ms", T.INT32, default=60_000),
    F("validate_only", T.BOOL, "1+"),
])  # fmt: skip

CREATE_TOPICS_RESPONSE = message("CreateTopicsResponse", 19, "2-7", "5+", [
    F("throttle_time_ms", T.INT32, "2+"),
    F("topics", [
        F("name", T.STRING),
        F("topic_id", T.UUID, "7+"),
        F("error_code", T.INT16),
        F("error_message", T.STRING, "1+", nullable="0+"),
        F("topic_config_error_code", T.INT16, "5+", tag=0, tagged="5+"),
        F("num_partitions", T.INT32, "5+", default=-1),
        F("replication_factor", T.INT16, "5+", default=-1),
        F("configs", [
            F("name", T.STRING, "5+"),
            F("value", T.STRING, "5+", nullable="5+"),
            F("read_only", T.BOOL, "5+"),
            F("config_source", T.INT8, "5+", default=-1),
            F("is_sensitive", T.BOOL, "5+"),
        ], "5+", nullable="5+"),
    ]),
])  # fmt: skip

DELETE_TOPICS_REQUEST = message("DeleteTopicsRequest", 20, "1-6", "4+", [
    F("topics", [
        F("name", T.STRING, "6+", nullable="6+"),
        F("topic_id", T.UUID, "6+"),
    ], "6+"),
    F("topic_names", T.STRING, "0-5", array=True),
    F("timeout_ms", T.INT32),
])  # fmt: skip

DELETE_TOPICS_RESPONSE = message("DeleteTopicsResponse", 20, "1-6", "4+", [
    F("throttle_time_ms", T.INT32, "1+"),
    F("responses", [
        F("name", T.STRING, nullable="6+"),
        F("topic_id", T.UUID, "6+"),
        F("error_code", T.INT16),
        F("error_message", T.STRING, "5+", nullable="5+"),
    ]),
])  # fmt: skip

CREATE_PARTITIONS_REQUEST = message("CreatePartitionsRequest", 37, "0-3", "2+", [
    F("topics", [
        F("name", T.STRING),
        F("count", T.INT32),
        F("assignments", [
            F("broker_ids", T.INT32, array=True),
        ], nullable="0+"),
    ]),
    F("timeout_ms", T.INT32),
    F("validate_only", T.BOOL),
])  # fmt: skip

CREATE_PARTITIONS_RESPONSE = message("CreatePartitionsResponse", 37, "0-3", "2+", [
    F("throttle_time_ms", T.INT32),
    F("results", [
        F("name", T.STRING),
        F("error_code", T.INT16),
        F("error_message", T.STRING, nullable="0+"),
    ]),
])  # fmt: skip

DESCRIBE_CONFIGS_REQUEST = message("DescribeConfigsRequest", 32, "1-4", "4+", [
    F("resources", [
        F("resource_type", T.INT8),
        F("resource_name", T.STRING),
        F("configuration_keys", T.STRING, array=True, nullable="0+"),
    ]),
    F("include_synonyms", T.BOOL, "1+"),
    F("include_documentation", T.BOOL, "3+"),
])  # fmt: skip

DESCRIBE_CONFIGS_RESPONSE = message("DescribeConfigsResponse", 32, "1-4", "4+", [
    F("throttle_time_ms", T.INT32),
    F("results", [
        F("error_code", T.INT16),
        F("error_message", T.STRING, nullable="0+"),
        F("resource_type", T.INT8),
        F("resource_name", T.STRING),
        F("configs", [
            F("name", T.STRING),
            F("value", T.STRING, nullable="0+"),
            F("read_only", T.BOOL),
            F("config_source", T.INT8, "1+", default=-1),
            F("is_default", T.BOOL, "0"),
            F("is_sensitive", T.BOOL),
            F("synonyms", [
                F("name", T.STRING, "1+"),
                F("value", T.STRING, "1+", nullable="0+"),
                F("source", T.INT8, "1+"),
            ], "1+"),
            F("config_type", T.INT8, "3+"),
            F("documentation", T.STRING, "3+", nullable="0+"),
        ]),
    ]),
])  # fmt: skip

ALTER_CONFIGS_REQUEST = message("AlterConfigsRequest", 33, "0-2", "2+", [
    F("resources", [
        F("resource_type", T.INT8),
        F("resource_name", T.STRING),
        F("configs", [
            F("name", T.STRING),
            F("value", T.STRING, nullable="0+"),
        ]),
    ]),
    F("validate_only", T.BOOL),
])  # fmt: skip

_ALTER_CONFIGS_RESULTS = [
    F("throttle_time_ms", T.INT32),
    F(
        "responses",
        [
            F("error_code", T.INT16),
            F("error_message", T.STRING, nullable="0+"),
            F("resource_type", T.INT8),
            F("resource_name", T.STRING),
        ],
    ),
]

ALTER_CONFIGS_RESPONSE = message("AlterConfigsResponse", 33, "0-2", "2+", _ALTER_CONFIGS_RESULTS)

INCREMENTAL_ALTER_CONFIGS_REQUEST = message("IncrementalAlterConfigsRequest", 44, "0-1", "1+", [
    F("resources", [
        F("resource_type", T.INT8),
        F("resource_name", T.STRING),
        F("configs", [
            F("name", T.STRING),
            F("config_operation", T.INT8),
            F("value", T.STRING, nullable="0+"),
        ]),
    ]),
    F("validate_only", T.BOOL),
])  # fmt: skip

INCREMENTAL_ALTER_CONFIGS_RESPONSE = message(
    "IncrementalAlterConfigsResponse", 44, "0-1", "1+", _ALTER_CONFIGS_RESULTS
)

DELETE_RECORDS_REQUEST = message("DeleteRecordsRequest", 21, "0-2", "2+", [
    F("topics", [
        F("name", T.STRING),
        F("partitions", [
            F("partition_index", T.INT32),
            F("offset", T.INT64),
        ]),
    ]),
    F("timeout_ms", T.INT32),
])  # fmt: skip

DELETE_RECORDS_RESPONSE = message("DeleteRecordsResponse", 21, "0-2", "2+", [
    F("throttle_time_ms", T.INT32),
    F("topics", [
        F("name", T.STRING),
        F("partitions", [
            F("partition_index", T.INT32),
            F("low_watermark", T.INT64),
            F("error_code", T.INT16),
        ]),
    ]),
])  # fmt: skip

DESCRIBE_CLUSTER_REQUEST = message("DescribeClusterRequest", 60, "0-2", "0+", [
    F("include_cluster_authorized_operations", T.BOOL),
    F("endpoint_type", T.INT8, "1+", default=1),
    F("include_fenced_brokers", T.BOOL, "2+"),
])  # fmt: skip

DESCRIBE_CLUSTER_RESPONSE = message("DescribeClusterResponse", 60, "0-2", "0+", [
    F("throttle_time_ms", T.INT32),
    F("error_code", T.INT16),
    F("error_message", T.STRING, nullable="0+"),
    F("endpoint_type", T.INT8, "1+", default=1),
    F("cluster_id", T.STRING),
    F("controller_id", T.INT32, default=-1),
    F("brokers", [
        F("broker_id", T.INT32),
        F("host", T.STRING),
        F("port", T.INT32),
        F("rack", T.STRING, nullable="0+"),
        F("is_fenced", T.BOOL, "2+"),
    ]),
    F("cluster_authorized_operations", T.INT32, default=AUTHORIZED_OPERATIONS_UNKNOWN),
])  # fmt: skip

OFFSET_FOR_LEADER_EPOCH_REQUEST = message("OffsetForLeaderEpochRequest", 23, "2-4", "4+", [
    F("replica_id", T.INT32, "3+", default=-2),
    F("topics", [
        F("topic", T.STRING),
        F("partitions", [
            F("partition", T.INT32),
            F("current_leader_epoch", T.INT32, "2+", default=-1),
            F("leader_epoch", T.INT32),
        ]),
    ]),
])  # fmt: skip

OFFSET_FOR_LEADER_EPOCH_RESPONSE = message("OffsetForLeaderEpochResponse", 23, "2-4", "4+", [
    F("throttle_time_ms", T.INT32, "2+"),
    F("topics", [
        F("topic", T.STRING),
        F("partitions", [
            F("error_code", T.INT16),
            F("partition", T.INT32),
            F("leader_epoch", T.INT32, "1+", default=-1),
            F("end_offset", T.INT64, default=-1),
        ]),
    ]),
])  # fmt: skip
