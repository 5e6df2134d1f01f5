"""eventmesh-kafka: Apache Kafka as an eventmesh connector (``type: kafka``).

Installed, it registers itself under the ``eventmesh.connectors`` entry point, so a mesh
config names it with ``type: kafka``; see docs/kafka.md.
"""

from eventmesh_kafka.config import KafkaConfig
from eventmesh_kafka.connector import KafkaConnector
from eventmesh_kafka.consumer import KafkaConsumer

__all__ = ["KafkaConfig", "KafkaConnector", "KafkaConsumer"]
