import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from eventmesh._generated.io.cloudevents.v1 import cloudevents_pb2 as _cloudevents_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StartPosition(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    START_POSITION_UNSPECIFIED: _ClassVar[StartPosition]
    START_POSITION_LATEST: _ClassVar[StartPosition]
    START_POSITION_EARLIEST: _ClassVar[StartPosition]
START_POSITION_UNSPECIFIED: StartPosition
START_POSITION_LATEST: StartPosition
START_POSITION_EARLIEST: StartPosition

class EventRequest(_message.Message):
    __slots__ = ("topic", "event", "timeout")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    topic: str
    event: _cloudevents_pb2.CloudEvent
    timeout: float
    def __init__(self, topic: _Optional[str] = ..., event: _Optional[_Union[_cloudevents_pb2.CloudEvent, _Mapping]] = ..., timeout: _Optional[float] = ...) -> None: ...

class EventReply(_message.Message):
    __slots__ = ("reply",)
    REPLY_FIELD_NUMBER: _ClassVar[int]
    reply: _cloudevents_pb2.CloudEvent
    def __init__(self, reply: _Optional[_Union[_cloudevents_pb2.CloudEvent, _Mapping]] = ...) -> None: ...

class PublishRequest(_message.Message):
    __slots__ = ("topic", "event")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    topic: str
    event: _cloudevents_pb2.CloudEvent
    def __init__(self, topic: _Optional[str] = ..., event: _Optional[_Union[_cloudevents_pb2.CloudEvent, _Mapping]] = ...) -> None: ...

class PublishBatchRequest(_message.Message):
    __slots__ = ("topic", "batch")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    topic: str
    batch: _cloudevents_pb2.CloudEventBatch
    def __init__(self, topic: _Optional[str] = ..., batch: _Optional[_Union[_cloudevents_pb2.CloudEventBatch, _Mapping]] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("stored", "ids")
    STORED_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    stored: int
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, stored: _Optional[int] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("open", "ack", "nack", "credit")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    open: Open
    ack: Ack
    nack: Nack
    credit: Credit
    def __init__(self, open: _Optional[_Union[Open, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., nack: _Optional[_Union[Nack, _Mapping]] = ..., credit: _Optional[_Union[Credit, _Mapping]] = ...) -> None: ...

class Open(_message.Message):
    __slots__ = ("topic", "group", "filter_json", "transform_json", "delivery_json", "position", "time", "name", "credits")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    FILTER_JSON_FIELD_NUMBER: _ClassVar[int]
    TRANSFORM_JSON_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_JSON_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    group: str
    filter_json: str
    transform_json: str
    delivery_json: str
    position: StartPosition
    time: _timestamp_pb2.Timestamp
    name: str
    credits: int
    def __init__(self, topic: _Optional[str] = ..., group: _Optional[str] = ..., filter_json: _Optional[str] = ..., transform_json: _Optional[str] = ..., delivery_json: _Optional[str] = ..., position: _Optional[_Union[StartPosition, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., name: _Optional[str] = ..., credits: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("delivery_ids",)
    DELIVERY_IDS_FIELD_NUMBER: _ClassVar[int]
    delivery_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, delivery_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class Nack(_message.Message):
    __slots__ = ("delivery_ids", "error", "give_up", "retry_after")
    DELIVERY_IDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    GIVE_UP_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    delivery_ids: _containers.RepeatedScalarFieldContainer[int]
    error: str
    give_up: bool
    retry_after: float
    def __init__(self, delivery_ids: _Optional[_Iterable[int]] = ..., error: _Optional[str] = ..., give_up: _Optional[bool] = ..., retry_after: _Optional[float] = ...) -> None: ...

class Credit(_message.Message):
    __slots__ = ("n",)
    N_FIELD_NUMBER: _ClassVar[int]
    n: int
    def __init__(self, n: _Optional[int] = ...) -> None: ...

class SubscribeResponse(_message.Message):
    __slots__ = ("subscribed", "delivery")
    SUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_FIELD_NUMBER: _ClassVar[int]
    subscribed: Subscribed
    delivery: Delivery
    def __init__(self, subscribed: _Optional[_Union[Subscribed, _Mapping]] = ..., delivery: _Optional[_Union[Delivery, _Mapping]] = ...) -> None: ...

class Subscribed(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Delivery(_message.Message):
    __slots__ = ("delivery_id", "attempt", "event", "topic")
    DELIVERY_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    delivery_id: int
    attempt: int
    event: _cloudevents_pb2.CloudEvent
    topic: str
    def __init__(self, delivery_id: _Optional[int] = ..., attempt: _Optional[int] = ..., event: _Optional[_Union[_cloudevents_pb2.CloudEvent, _Mapping]] = ..., topic: _Optional[str] = ...) -> None: ...
