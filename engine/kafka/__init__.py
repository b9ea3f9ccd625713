"""Kafka's binary protocol on each broker: existing Kafka clients and tools use the engine.

- engine.kafka.codec: the wire encoding and the one codec that reads the schemas;
- engine.kafka.schemas: the schemas of the APIs served, one module per API group;
- engine.kafka.error_codes: Kafka's error codes;
- engine.kafka.sasl: the data dir's credential, SASL PLAIN and SCRAM-SHA-256;
- engine.kafka.partitions: the partitions a broker leads, read and written for clients;
- engine.kafka.handlers: the answer to each API;
- engine.kafka.admin: the admin APIs' answers, through the engine's own admin operations;
- engine.kafka.leader_epochs: the end offset of a leader epoch (OffsetForLeaderEpoch);
- engine.kafka.listener: the port, its connections, their authentication.
"""
