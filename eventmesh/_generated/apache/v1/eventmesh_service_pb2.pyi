from google.protobuf import empty_pb2 as _empty_pb2
from eventmesh._generated.io.cloudevents.v1 import cloudevents_pb2 as _cloudevents_pb2
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor
