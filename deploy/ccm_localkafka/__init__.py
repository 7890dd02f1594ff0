"""Local Apache Kafka broker (KRaft, single node) for ccm-tally's tests and demo.

See ``deploy/kafka/pom.xml`` for the pinned Kafka version and ``python -m ccm_localkafka``.
"""

from ccm_localkafka.broker import (
    DEFAULT_LIB_DIR,
    KAFKA_VERSION,
    LIB_ENV,
    POM_PATH,
    SCALA_BINARY_VERSION,
    KafkaLauncherError,
    LocalKafka,
    SaslUser,
    create_topics,
    create_topics_sync,
    ensure_jars,
)

__all__ = [
    "DEFAULT_LIB_DIR",
    "KAFKA_VERSION",
    "LIB_ENV",
    "POM_PATH",
    "SCALA_BINARY_VERSION",
    "KafkaLauncherError",
    "LocalKafka",
    "SaslUser",
    "create_topics",
    "create_topics_sync",
    "ensure_jars",
]
