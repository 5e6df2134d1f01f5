"""The internal event against the CloudEvents SDK: construct, encode, decode."""

from __future__ import annotations

from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from harness import Row, Section, per_call_ns

from eventmesh import Event
from eventmesh.event import decode_json, encode_json

TITLE = "Events: eventmesh.Event against the CloudEvents SDK"


def main(quick: bool) -> Section:
    calls = 20_000 if quick else 100_000
    data = {"id": 42, "amount": 129.5, "items": ["a", "b"], "customer": {"name": "x"}}
    attrs = {"type": "com.example.order.created", "source": "/shop", "subject": "orders/42"}
    fmt = JSONFormat()
    ours = Event(**attrs, data=data, extensions={"partitionkey": "c1"})
    theirs = ours.to_cloudevent()
    payload = encode_json(ours)

    def sdk_new() -> object:
        return CloudEvent(attributes={**attrs, "partitionkey": "c1"}, data=data)

    rows = [
        (
            "construct (default id and time)",
            per_call_ns(
                lambda: Event(**attrs, data=data, extensions={"partitionkey": "c1"}), calls
            ),
            per_call_ns(sdk_new, calls),
        ),
        (
            "encode to JSON format",
            per_call_ns(lambda: encode_json(ours), calls),
            per_call_ns(lambda: fmt.write(theirs), calls),
        ),
        (
            "decode from JSON format",
            per_call_ns(lambda: decode_json(payload), calls),
            per_call_ns(lambda: fmt.read(CloudEvent, payload), calls),
        ),
        (
            "round trip: decode then encode",
            per_call_ns(lambda: encode_json(decode_json(payload)), calls),
            per_call_ns(lambda: fmt.write(fmt.read(CloudEvent, payload)), calls),
        ),
    ]
    section = Section(TITLE)
    for name, value, baseline in rows:
        section.rows.append(
            Row(
                name=name,
                value=value,
                unit="ns/event",
                baseline=baseline,
                baseline_name="cloudevents SDK",
                higher_is_better=False,
            )
        )
    section.notes.append(
        "Why the SDK stays at the edges: every event on the hot path is an eventmesh.Event "
        "(a msgspec Struct), decoded once and encoded once. Default ids are random UUIDv4 "
        "strings from a private generator, which is why construction is cheap."
    )
    return section
