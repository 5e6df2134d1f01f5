"""The CloudEvents conformance vectors (tests/conformance_vectors/, a copy of
../shared/conformance/cloudevents) round-trip through the sidecar with identical bytes:
each is published over HTTP in its content mode, stored by the in-memory, Kafka (binary
and structured records) or NATS (structured and binary messages) connector, and pushed
to a webhook in the same mode, where every attribute is the string sent and the data
the bytes sent. The Kafka binding's scenarios go in as raw Kafka records.

One thing no structured-mode hop can keep is whitespace around a JSON ``data`` value (it
is a member of the event's JSON object, not a document of its own); in structured mode
JSON data is expected without it, and with it everywhere else."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from _interop import (
    ATTRIBUTES,
    STRUCTURED,
    Spec,
    data_of,
    is_json,
    post_event,
    raw_sink,
    sidecar,
    sidecar_config,
    spec_from_http,
    spec_to_http,
    webhook,
    with_data,
)
from aiokafka import AIOKafkaProducer

pytestmark = pytest.mark.anyio

VECTORS = Path(__file__).resolve().parents[1] / "conformance_vectors"


def _vectors() -> list[tuple[str, str, Spec, dict[str, str]]]:
    """(name, mode, spec, transport headers) for each event of v1*.yaml; a vector without
    a mode travels in both."""
    out: list[tuple[str, str, Spec, dict[str, str]]] = []
    for file in ("v1.yaml", "v1_minimum.yaml"):
        text = (VECTORS / file).read_text(encoding="utf-8")
        for i, doc in enumerate(yaml.load_all(text, Loader=yaml.BaseLoader)):
            attributes = dict(doc["ContextAttributes"])
            extensions = dict(attributes.pop("Extensions", None) or {})
            spec = with_data({**attributes, "extensions": extensions}, doc["Data"].encode())
            transport = dict(doc.get("TransportExtensions") or {})
            for mode in [doc["Mode"]] if "Mode" in doc else ["binary", "structured"]:
                out.append((f"{file}#{i}-{mode}", mode, spec, transport))
    return out


def _http_scenarios() -> list[tuple[str, dict[str, str], bytes]]:
    """(name, headers, body) of each request in http-protocol-binding.feature, outlines
    expanded with their examples."""
    text = (VECTORS / "http-protocol-binding.feature").read_text(encoding="utf-8")
    out: list[tuple[str, dict[str, str], bytes]] = []
    for outline in text.split("Scenario Outline:")[1:]:
        title = outline.splitlines()[0].strip()
        request = _docstring(outline)
        examples = outline.split("Examples:")[1].strip().splitlines()[1:]
        for row in examples:
            content_type = row.strip().strip("|").strip()
            head, body = request.replace("<contentType>", content_type).split("\n\n", 1)
            headers = dict(line.split(": ", 1) for line in head.splitlines()[1:])
            headers.pop("Content-Length")  # the feature's count is not its body's
            headers.pop("Host")
            out.append((f"{title}-{content_type}", headers, body.encode()))
    return out


def _docstring(text: str) -> str:
    """The first Gherkin docstring in ``text``, its indentation removed."""
    match = re.search(r'\n( *)"""\n(.*?)\n *"""', text, re.S)
    assert match is not None
    indent = len(match.group(1))
    return "\n".join(line[indent:] for line in match.group(2).splitlines())


VECTOR_CASES = _vectors()
HTTP_SCENARIOS = _http_scenarios()


def expected(spec: Spec, mode: str) -> Spec:
    """What a webhook in ``mode`` must receive for ``spec``: the same, but JSON data
    without the whitespace around its value in structured mode."""
    data = data_of(spec)
    if mode == "structured" and data is not None and is_json(spec.get("datacontenttype")):
        return with_data(spec, data.strip(b" \t\r\n"))
    return spec


@pytest.fixture(
    params=[
        "memory",
        "local",
        pytest.param("kafka-binary", marks=pytest.mark.kafka),
        pytest.param("kafka-structured", marks=pytest.mark.kafka),
        pytest.param("nats-structured", marks=pytest.mark.nats),
        pytest.param("nats-binary", marks=pytest.mark.nats),
    ]
)
def store(request: pytest.FixtureRequest) -> dict[str, Any] | None:
    """The sidecar's connector: in-memory, the local store, or Kafka or NATS in one of
    their modes."""
    if request.param == "memory":
        return None
    if request.param == "local":
        return {"type": "local", "data_dir": str(request.getfixturevalue("tmp_path"))}
    broker, mode = request.param.split("-")
    if broker == "kafka":
        return {
            "type": "kafka",
            "bootstrap_servers": request.getfixturevalue("kafka_bootstrap"),
            "partitions": 1,
            "request_timeout_ms": 10_000,
            "session_timeout_ms": 6_000,
            "heartbeat_interval_ms": 300,
            "mode": mode,
        }
    prefix = request.getfixturevalue("stream_prefix")
    return {
        "type": "nats",
        "servers": [request.getfixturevalue("nats_url")],
        "subject_prefix": f"{prefix.lower()}.",
        "stream": {"name_prefix": prefix},
        "binding": mode,
    }


async def round_trip(
    store: dict[str, Any] | None, mode: str, headers: dict[str, str], body: bytes
) -> Spec:
    """Publish one request to a sidecar on ``store``; the event its webhook (in ``mode``)
    receives, as the binding's rules read it."""
    topic = f"vectors-{uuid.uuid4().hex[:12]}"
    async with raw_sink() as sink:
        config = sidecar_config([webhook("vectors", topic, sink.url, mode=mode)], store)
        async with sidecar(config) as running:
            await post_event(f"{running.http_url}/topics/{topic}/events", headers, body)
            request = await sink.next()
    return spec_from_http(request.headers, request.body)


@pytest.mark.parametrize(
    ("mode", "spec", "transport"),
    [case[1:] for case in VECTOR_CASES],
    ids=[case[0] for case in VECTOR_CASES],
)
async def test_each_vector_arrives_with_identical_attributes_and_bytes(
    store: dict[str, Any] | None, mode: str, spec: Spec, transport: dict[str, str]
) -> None:
    """A conformance vector published in its mode reaches a webhook in that mode with
    every attribute the string sent and its data the bytes sent."""
    headers, body = spec_to_http(spec, mode)
    seen = await round_trip(store, mode, {**transport, **headers}, body)
    assert seen == expected(spec, mode)


@pytest.mark.parametrize(
    ("headers", "body"),
    [case[1:] for case in HTTP_SCENARIOS],
    ids=[case[0] for case in HTTP_SCENARIOS],
)
async def test_each_http_scenario_arrives_as_it_was_sent(
    store: dict[str, Any] | None, headers: dict[str, str], body: bytes
) -> None:
    """Each request of the HTTP binding's feature file, published as written, reaches a
    webhook in its mode with every attribute and the data bytes as written."""
    mode = "structured" if headers["Content-Type"].startswith(STRUCTURED) else "binary"
    sent = spec_from_http({k.lower(): v for k, v in headers.items()}, body)
    seen = await round_trip(store, mode, headers, body)
    assert seen == sent


def _kafka_scenarios() -> list[tuple[str, list[tuple[str, bytes]], bytes]]:
    """(name, headers, value) of each record in kafka-protocol-binding.feature, outlines
    expanded with their examples."""
    text = (VECTORS / "kafka-protocol-binding.feature").read_text(encoding="utf-8")
    out: list[tuple[str, list[tuple[str, bytes]], bytes]] = []
    for scenario in re.split(r"Scenario(?: Outline)?:", text)[1:]:
        title = scenario.splitlines()[0].strip()
        value = _docstring(scenario)
        table = scenario.split("And Kafka headers:")[1].split("When")[0]
        rows = [
            [cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in table.strip().splitlines()[1:]
        ]
        examples: list[str | None] = [None]
        if "Examples:" in scenario:
            lines = scenario.split("Examples:")[1].strip().splitlines()[1:]
            examples = [line.strip().strip("|").strip() for line in lines]
        for example in examples:
            headers = [
                (key, (value_ if example is None else value_.replace("<contentType>", example)))
                for key, value_ in rows
            ]
            name = title if example is None else f"{title}-{example}"
            out.append((name, [(k, v.encode()) for k, v in headers], value.encode()))
    return out


KAFKA_SCENARIOS = _kafka_scenarios()


def spec_from_kafka(headers: list[tuple[str, bytes]], value: bytes) -> Spec:
    """The spec of a Kafka record by the Kafka binding's rules: ``ce_`` headers as UTF-8
    (no percent-encoding in Kafka), ``content-type``, the value as the data; or a
    structured value, read as HTTP's structured mode is."""
    named = {key.lower(): raw.decode() for key, raw in headers}
    if named.get("content-type", "").startswith(STRUCTURED):
        return spec_from_http({"content-type": named["content-type"]}, value)
    spec: Spec = {"extensions": {}}
    for key, text in named.items():
        if key.startswith("ce_"):
            name = key[3:]
            if name in (*ATTRIBUTES, "time"):
                spec[name] = text
            else:
                spec["extensions"][name] = text
    if "content-type" in named:
        spec["datacontenttype"] = named["content-type"]
    return with_data(spec, value or None)


@pytest.mark.kafka
@pytest.mark.parametrize(
    ("headers", "value"),
    [case[1:] for case in KAFKA_SCENARIOS],
    ids=[case[0] for case in KAFKA_SCENARIOS],
)
async def test_each_kafka_scenario_record_reaches_a_webhook_as_it_was_written(
    kafka_bootstrap: str, headers: list[tuple[str, bytes]], value: bytes
) -> None:
    """Each record of the Kafka binding's feature file, written to Kafka by a bare
    producer, reaches a mesh webhook in its mode with every attribute and the data bytes
    as written."""
    topic = f"vectors-{uuid.uuid4().hex[:12]}"
    sent = spec_from_kafka(headers, value)
    structured = dict(headers)["content-type"].startswith(STRUCTURED.encode())
    mode = "structured" if structured else "binary"
    store = {
        "type": "kafka",
        "bootstrap_servers": kafka_bootstrap,
        "partitions": 1,
        "session_timeout_ms": 6_000,
        "heartbeat_interval_ms": 300,
    }
    async with raw_sink() as sink:
        config = sidecar_config([webhook("vectors", topic, sink.url, mode=mode)], store)
        async with sidecar(config):
            producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
            await producer.start()
            try:
                await producer.send_and_wait(topic, value, headers=headers)
            finally:
                await producer.stop()
            request = await sink.next()
    assert spec_from_http(request.headers, request.body) == sent
