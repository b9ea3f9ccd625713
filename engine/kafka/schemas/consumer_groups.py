"""Consumer groups: membership, committed offsets, administration (JoinGroup*.json,
SyncGroup*.json, Heartbeat*.json, LeaveGroup*.json, OffsetCommit*.json, OffsetFetch*.json,
DescribeGroups*.json, ListGroups*.json, DeleteGroups*.json), and the consumer protocol's
own payloads that ride inside them (ConsumerProtocolSubscription.json,
ConsumerProtocolAssignment.json).

Served versions: the classic group protocol as far as its clients go. OffsetCommit
v10 and OffsetFetch v10 (topic ids instead of names, KIP-848) are not served; a client
asks for v9 then.
"""

from __future__ import annotations

from engine.kafka.codec import F, Type, message

T = Type

JOIN_GROUP_REQUEST = message("JoinGroupRequest", 11, "0-9", "6+", [
    F("group_id", T.STRING),
    F("session_timeout_ms", T.INT32),
    F("rebalance_timeout_ms", T.INT32, "1+", default=-1),
    F("member_id", T.STRING),
    F("group_instance_id", T.STRING, "5+", nullable="5+"),
    F("protocol_type", T.STRING),
    F("protocols", [
        F("name", T.STRING),
        F("metadata", T.BYTES),
    ]),
    F("reason", T.STRING, "8+", nullable="8+"),
])  # fmt: skip

JOIN_GROUP_RESPONSE = message("JoinGroupResponse", 11, "0-9", "6+", [
    F("throttle_time_ms", T.INT32, "2+"),
    F("error_code", T.INT16),
    F("generation_id", T.INT32, default=-1),
    F("protocol_type", T.STRING, "7+", nullable="7+"),
    F("protocol_name", T.STRING, nullable="7+"),
    F("leader", T.STRING),
    F("skip_assignment", T.BOOL, "9+"),
    F("member_id", T.STRING),
    F("members", [
        F("member_id", T.STRING),
        F("group_instance_id", T.STRING, "5+", nullable="5+"),
        F("metadata", T.BYTES),
    ]),
])  # fmt: skip

SYNC_GROUP_REQUEST = message("SyncGroupRequest", 14, "0-5", "4+", [
    F("group_id", T.STRING),
    F("generation_id", T.INT32),
    F("member_id", T.STRING),
    F("group_instance_id", T.STRING, "3+", nullable="3+"),
    F("protocol_type", T.STRING, "5+", nullable="5+"),
    F("protocol_name", T.STRING, "5+", nullable="5+"),
    F("assignments", [
        F("member_id", T.STRING),
        F("assignment", T.BYTES),
    ]),
])  # fmt: skip

SYNC_GROUP_RESPONSE = message("SyncGroupResponse", 14, "0-5", "4+", [
    F("throttle_time_ms", T.INT32, "1+"),
    F("error_code", T.INT16),
    F("protocol_type", T.STRING, "5+", nullable="5+"),
    F("protocol_name", T.STRING, "5+", nullable="5+"),
    F("assignment", T.BYTES),
])  # fmt: skip

HEARTBEAT_REQUEST = message("HeartbeatRequest", 12, "0-4", "4+", [
    F("group_id", T.STRING),
    F("generation_id", T.INT32),
    F("member_id", T.STRING),
    F("group_instance_id", T.STRING, "3+", nullable="3+"),
])  # fmt: skip

HEARTBEAT_RESPONSE = message("HeartbeatResponse", 12, "0-4", "4+", [
    F("throttle_time_ms", T.INT32, "1+"),
    F("error_code", T.INT16),
])  # fmt: skip

LEAVE_GROUP_REQUEST = message("LeaveGroupRequest", 13, "0-5", "4+", [
    F("group_id", T.STRING),
    F("member_id", T.STRING, "0-2"),
    F("members", [
        F("member_id", T.STRING, "3+"),
        F("group_instance_id", T.STRING, "3+", nullable="3+"),
        F("reason", T.STRING, "5+", nullable="5+"),
    ], "3+"),
])  # fmt: skip

LEAVE_GROUP_RESPONSE = message("LeaveGroupResponse", 13, "0-5", "4+", [
    F("throttle_time_ms", T.INT32, "1+"),
    F("error_code", T.INT16),
    F("members", [
        F("member_id", T.STRING, "3+"),
        F("group_instance_id", T.STRING, "3+", nullable="3+"),
        F("error_code", T.INT16, "3+"),
    ], "3+"),
])  # fmt: skip

OFFSET_COMMIT_REQUEST = message("OffsetCommitRequest", 8, "0-9", "8+", [
    F("group_id", T.STRING),
    F("generation_id_or_member_epoch", T.INT32, "1+", default=-1),
    F("member_id", T.STRING, "1+"),
    F("group_instance_id", T.STRING, "7+", nullable="7+"),
    F("retention_time_ms", T.INT64, "2-4", default=-1),
    F("topics", [
        F("name", T.STRING),
        F("partitions", [
            F("partition_index", T.INT32),
            F("committed_offset", T.INT64),
            F("committed_leader_epoch", T.INT32, "6+", default=-1),
            F("commit_timestamp", T.INT64, "1", default=-1),
            F("committed_metadata", T.STRING, nullable="0+"),
        ]),
    ]),
])  # fmt: skip

OFFSET_COMMIT_RESPONSE = message("OffsetCommitResponse", 8, "0-9", "8+", [
    F("throttle_time_ms", T.INT32, "3+"),
    F("topics", [
        F("name", T.STRING),
        F("partitions", [
            F("partition_index", T.INT32),
            F("error_code", T.INT16),
        ]),
    ]),
])  # fmt: skip

OFFSET_FETCH_REQUEST = message("OffsetFetchRequest", 9, "0-9", "6+", [
    F("group_id", T.STRING, "0-7"),
    F("topics", [
        F("name", T.STRING, "0-7"),
        F("partition_indexes", T.INT32, "0-7", array=True),
    ], "0-7", nullable="2-7"),
    F("groups", [
        F("group_id", T.STRING, "8+"),
        F("member_id", T.STRING, "9+", nullable="9+"),
        F("member_epoch", T.INT32, "9+", default=-1),
        F("topics", [
            F("name", T.STRING, "8+"),
            F("partition_indexes", T.INT32, "8+", array=True),
        ], "8+", nullable="8+"),
    ], "8+"),
    F("require_stable", T.BOOL, "7+"),
])  # fmt: skip

OFFSET_FETCH_RESPONSE = message("OffsetFetchResponse", 9, "0-9", "6+", [
    F("throttle_time_ms", T.INT32, "3+"),
    F("topics", [
        F("name", T.STRING, "0-7"),
        F("partitions", [
            F("partition_index", T.INT32, "0-7"),
            F("committed_offset", T.INT64, "0-7"),
            F("committed_leader_epoch", T.INT32, "5-7", default=-1),
            F("metadata", T.STRING, "0-7", nullable="0-7"),
            F("error_code", T.INT16, "0-7"),
        ], "0-7"),
    ], "0-7"),
    F("error_code", T.INT16, "2-7"),
    F("groups", [
        F("group_id", T.STRING, "8+"),
        F("topics", [
            F("name", T.STRING, "8+"),
            F("partitions", [
                F("partition_index", T.INT32, "8+"),
                F("committed_offset", T.INT64, "8+"),
                F("committed_leader_epoch", T.INT32, "8+", default=-1),
                F("metadata", T.STRING, "8+", nullable="8+"),
                F("error_code", T.INT16, "8+"),
            ], "8+"),
        ], "8+"),
        F("error_code", T.INT16, "8+"),
    ], "8+"),
])  # fmt: skip

DESCRIBE_GROUPS_REQUEST = message("DescribeGroupsRequest", 15, "0-6", "5+", [
    F("groups", T.STRING, array=True),
    F("include_authorized_operations", T.BOOL, "3+"),
])  # fmt: skip

#: AuthorizedOperations when they were not asked for.
AUTHORIZED_OPERATIONS_UNKNOWN = -(2**31)

DESCRIBE_GROUPS_RESPONSE = message("DescribeGroupsResponse", 15, "0-6", "5+", [
    F("throttle_time_ms", T.INT32, "1+"),
    F("groups", [
        F("error_code", T.INT16),
        F("error_message", T.STRING, "6+", nullable="6+"),
        F("group_id", T.STRING),
        F("group_state", T.STRING),
        F("protocol_type", T.STRING),
        F("protocol_data", T.STRING),
        F("members", [
            F("member_id", T.STRING),
            F("group_instance_id", T.STRING, "4+", nullable="4+"),
            F("client_id", T.STRING),
            F("client_host", T.STRING),
            F("member_metadata", T.BYTES),
            F("member_assignment", T.BYTES),
        ]),
        F("authorized_operations", T.INT32, "3+", default=AUTHORIZED_OPERATIONS_UNKNOWN),
    ]),
])  # fmt: skip

LIST_GROUPS_REQUEST = message("ListGroupsRequest", 16, "0-5", "3+", [
    F("states_filter", T.STRING, "4+", array=True),
    F("types_filter", T.STRING, "5+", array=True),
])  # fmt: skip

LIST_GROUPS_RESPONSE = message("ListGroupsResponse", 16, "0-5", "3+", [
    F("throttle_time_ms", T.INT32, "1+"),
    F("error_code", T.INT16),
    F("groups", [
        F("group_id", T.STRING),
        F("protocol_type", T.STRING),
        F("group_state", T.STRING, "4+"),
        F("group_type", T.STRING, "5+"),
    ]),
])  # fmt: skip

DELETE_GROUPS_REQUEST = message("DeleteGroupsRequest", 42, "0-2", "2+", [
    F("groups_names", T.STRING, array=True),
])  # fmt: skip

DELETE_GROUPS_RESPONSE = message("DeleteGroupsResponse", 42, "0-2", "2+", [
    F("throttle_time_ms", T.INT32),
    F("results", [
        F("group_id", T.STRING),
        F("error_code", T.INT16),
    ]),
])  # fmt: skip

# The consumer protocol's payloads ("consumer" protocol type): a JoinGroup's protocol
# metadata is a subscription, a SyncGroup's assignment an assignment. Each starts with
# its own int16 version, then the fields at that version, never flexible.

CONSUMER_SUBSCRIPTION = message("ConsumerProtocolSubscription", -1, "0-3", "none", [
    F("topics", T.STRING, array=True),
    F("user_data", T.BYTES, nullable="0+"),
    F("owned_partitions", [
        F("topic", T.STRING, "1+"),
        F("partitions", T.INT32, "1+", array=True),
    ], "1+"),
    F("generation_id", T.INT32, "2+", default=-1),
    F("rack_id", T.STRING, "3+", nullable="3+"),
])  # fmt: skip

CONSUMER_ASSIGNMENT = message("ConsumerProtocolAssignment", -1, "0-3", "none", [
    F("assigned_partitions", [
        F("topic", T.STRING),
        F("partitions", T.INT32, array=True),
    ]),
    F("user_data", T.BYTES, nullable="0+"),
])  # fmt: skip
