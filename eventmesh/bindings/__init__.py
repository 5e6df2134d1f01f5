"""Protocol bindings: pure functions between wire messages and :class:`eventmesh.Event`."""

from eventmesh.bindings._common import (
    decode_attribute,
    decode_data,
    encode_attribute,
    encode_data,
    is_json_media_type,
)

__all__ = [
    "decode_attribute",
    "decode_data",
    "encode_attribute",
    "encode_data",
    "is_json_media_type",
]
