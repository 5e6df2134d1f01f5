"""eventmesh-nats: the NATS connector for eventmesh (core NATS and JetStream).

Installed, it registers as ``type: nats`` in the ``eventmesh.connectors`` entry-point
group. See docs/nats.md for the two modes, what each promises, and every setting.
"""

from eventmesh_nats.config import (
    ConsumerSettings,
    CoreSettings,
    NatsConfig,
    StreamSettings,
    TlsSettings,
)
from eventmesh_nats.connector import NatsConnector

__all__ = [
    "ConsumerSettings",
    "CoreSettings",
    "NatsConfig",
    "NatsConnector",
    "StreamSettings",
    "TlsSettings",
]
