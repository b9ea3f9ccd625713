"""The way out: the engine's Producer, Consumer and Admin on any Kafka-protocol cluster.

``Producer(bootstrap_servers=...)``, ``Consumer(..., bootstrap_servers=...)`` and
``Admin(bootstrap_servers=...)`` make, through the public classes' ``__new__``, an
instance of the subclass here (engine.kafka_client.producer, .consumer, .admin), which
drives confluent-kafka (librdkafka) instead of the rings and the data dir. The same
methods, the same options (checked by the same validators: ProducerConfig,
ConsumerConfig, engine.config's topic names), the same futures (engine.future), the
same records (engine.Record) and the same errors (one table maps Kafka's error codes
to engine.errors classes: engine.kafka_client.errors). What only the rings or the data
dir can give (``poll_values``, ``ring.bytes``, ``poll_spin_us``, ``Admin.data_dir``)
raises UnsupportedOnKafkaError naming it.

The connection settings (engine.kafka_client.settings): ``bootstrap_servers``,
``security_protocol``, ``sasl_mechanism``, ``sasl_username``, ``sasl_password``, and
``kafka_config``, a dict of further librdkafka settings passed through as they are.
confluent-kafka is imported only when one of these classes is made.
"""
