"""Apache EventMesh's wire protocol on the sidecar, without Java: raw gRPC calls through the
generated stubs and form POSTs to ``/``, against in-process Sidecars on 127.0.0.1 (the
SDK itself is driven by tests/interop/test_java_sdk.py)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import grpc
import grpc.aio
import pytest
from aiohttp import web

from eventmesh import Event
from eventmesh._generated.apache.v1 import eventmesh_service_pb2 as apache_pb
from eventmesh._generated.apache.v1.eventmesh_service_pb2_grpc import (
    ConsumerServiceStub,
    HeartbeatServiceStub,
    PublisherServiceStub,
)
from eventmesh._generated.eventmesh.v1 import eventmesh_pb2 as pb
from eventmesh._generated.eventmesh.v1.eventmesh_pb2_grpc import EventMeshStub
from eventmesh.bindings.protobuf import CloudEvent, CloudEventBatch, to_proto, to_proto_batch
from eventmesh.delivery.webhook import WebhookSession
from eventmesh.errors import DeliveryError
from eventmesh.event import URI
from eventmesh.server.apache_grpc import MAX_ATTRIBUTES, MAX_BATCH
from eventmesh.server.apache_wire import MAX_ITEMS, MAX_SPEC, ApacheWebhookSink
from eventmesh.server.sidecar import Sidecar

pytestmark = pytest.mark.anyio

FREE = {"http": {"port": 0}, "grpc": {"port": 0}, "admin": {"port": 0}}
MEMORY = {"default": {"type": "memory"}}
TOKEN = "billing-secret-token"
AUTH = {"tokens": [{"principal": "billing", "sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}]}
ACL = [
    {
        "principal": "billing",
        "allow": ["publish", "subscribe"],
        "topics": ["orders"],
        "groups": ["billing"],
    }
]
CLIENT = {  # what the SDK adds to every event
    "env": "env",
    "idc": "default",
    "ip": "10.0.0.1",
    "pid": "42",
    "sys": "sys123",
    "username": "billing",
    "passwd": TOKEN,
    "language": "JAVA",
    "protocoltype": "cloudevents",
    "protocoldesc": "grpc-cloud-event",
    "protocolversion": "1.0",
    "uniqueid": "123456789012345678901234567890",
    "seqnum": "098765432109876543210987654321",
    "producergroup": "producers",
    "ttl": "4000",
}


@pytest.fixture(scope="module")
def anyio_backend() -> Any:
    """asyncio with uvloop, one loop for the module (grpc.aio keeps to its loop)."""
    return ("asyncio", {"use_uvloop": True})


@pytest.fixture(scope="module", autouse=True)
async def one_loop() -> AsyncIterator[None]:
    """Runs every test of the module on one event loop."""
    yield  # noqa: PT022  # anyio keeps its runner, so the loop, until this fixture ends


@pytest.fixture(scope="module")
async def open_sidecar() -> AsyncIterator[Sidecar]:
    """A sidecar without auth."""
    async with Sidecar({"server": FREE, "connectors": MEMORY}) as running:
        yield running


@pytest.fixture(scope="module")
async def guarded_sidecar() -> AsyncIterator[Sidecar]:
    """A sidecar with a static token and an ACL."""
    async with Sidecar({"server": FREE, "connectors": MEMORY, "auth": AUTH, "acl": ACL}) as running:
        yield running


def cloud_event(topic: str | None, **attributes: str) -> CloudEvent:
    """A CloudEvent as the Java SDK sends it: JSON text data, client metadata."""
    msg = CloudEvent(id="e-1", source="/orders", spec_version="1.0", type="order.created")
    for name, value in {**CLIENT, **attributes}.items():
        msg.attributes[name].ce_string = value
    if topic is not None:
        msg.attributes["subject"].ce_string = topic
    msg.attributes["datacontenttype"].ce_string = "application/json"
    msg.text_data = '{"n":1}'
    return msg


def subscription(group: str, *topics: str, **attributes: str) -> CloudEvent:
    """A subscription CloudEvent as the SDK's consumer sends it."""
    msg = CloudEvent(id="s-1", source="/", spec_version="1.0", type="org.apache.eventmesh")
    for name, value in {**CLIENT, "consumergroup": group, **attributes}.items():
        msg.attributes[name].ce_string = value
    msg.attributes["datacontenttype"].ce_string = "application/json"
    items = [{"topic": t, "mode": "CLUSTERING", "type": "ASYNC"} for t in topics]
    msg.text_data = json.dumps(items)
    return msg


def status(msg: CloudEvent) -> str:
    code: str = msg.attributes["statuscode"].ce_string
    return code


async def post(sidecar: Sidecar, code: str, form: dict[str, str], **headers: str) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{sidecar.http_url}/", data=form, headers={"code": code, **headers}) as r,
    ):
        assert r.status == 200
        return await r.json()


async def test_the_services_keep_apache_eventmesh_names_and_field_numbers() -> None:
    """The method paths are Apache EventMesh's, and the messages have its field numbers."""
    services = apache_pb.DESCRIPTOR.services_by_name
    assert services["PublisherService"].full_name == (
        "org.apache.eventmesh.cloudevents.v1.PublisherService"
    )
    assert [m.name for m in services["ConsumerService"].methods] == [
        "subscribe",
        "subscribeStream",
        "unsubscribe",
    ]
    numbers = {f.name: f.number for f in CloudEvent.DESCRIPTOR.fields}
    assert numbers == {
        "id": 1,
        "source": 2,
        "spec_version": 3,
        "type": 4,
        "attributes": 5,
        "binary_data": 6,
        "text_data": 7,
        "proto_data": 8,
    }
    value = CloudEvent.CloudEventAttributeValue.DESCRIPTOR.fields_by_name
    assert [value[n].number for n in ("ce_boolean", "ce_string", "ce_timestamp")] == [1, 3, 7]
    assert CloudEventBatch.DESCRIPTOR.fields_by_name["events"].number == 1


async def test_publish_stores_the_event_without_client_metadata(open_sidecar: Sidecar) -> None:
    """publish answers "0" with a ce_timestamp time; the stored event keeps its own
    extensions and subject but none of the client metadata, passwd least of all."""
    sub = open_sidecar.mesh.subscribe("apache.strip", "g")
    async with sub, grpc.aio.insecure_channel(open_sidecar.grpc_target) as channel:
        answer = await PublisherServiceStub(channel).publish(
            cloud_event("apache.strip", traceid="t-1")
        )
        assert status(answer) == "0"
        assert answer.attributes["time"].WhichOneof("attr") == "ce_timestamp"
        with anyio.fail_after(10):
            delivery = await anext(aiter(sub))
        await delivery.ack()
    event = delivery.event
    assert event.extensions == {"traceid": "t-1"}
    assert (event.id, event.subject, event.data) == ("e-1", "apache.strip", {"n": 1})


async def test_publish_without_subject_is_answered_7(open_sidecar: Sidecar) -> None:
    """The topic is the subject: an event without one is a body error, not a gRPC error."""
    async with grpc.aio.insecure_channel(open_sidecar.grpc_target) as channel:
        answer = await PublisherServiceStub(channel).publish(cloud_event(None))
    assert status(answer) == "7"
    assert "withSubject" in answer.attributes["responsemessage"].ce_string


async def test_passwd_is_the_bearer_token(guarded_sidecar: Sidecar) -> None:
    """With auth on, passwd authenticates as a token of the principal username names,
    and the ACL applies: a wrong password, a wrong username or a topic not granted are
    answered 20, over gRPC and HTTP alike."""
    async with grpc.aio.insecure_channel(guarded_sidecar.grpc_target) as channel:
        publish = PublisherServiceStub(channel).publish
        assert status(await publish(cloud_event("orders"))) == "0"
        assert status(await publish(cloud_event("orders", passwd="guess"))) == "20"
        assert status(await publish(cloud_event("orders", username="root"))) == "20"
        assert status(await publish(cloud_event("payroll"))) == "20"
    content = json.dumps(
        {"specversion": "1.0", "id": "h-1", "source": "/s", "type": "t", "subject": "orders"}
    )
    headers = {"username": "billing", "passwd": TOKEN, "protocoltype": "cloudevents"}
    answer = await post(guarded_sidecar, "104", {"content": content}, **headers)
    assert answer["retCode"] == 0
    answer = await post(guarded_sidecar, "104", {"content": content}, **{**headers, "passwd": "x"})
    assert answer["retCode"] == 20


async def test_a_heartbeat_needs_the_grant_to_subscribe_its_group(
    guarded_sidecar: Sidecar,
) -> None:
    """With auth on, a heartbeat naming a group the caller may not subscribe in is
    refused (20), over gRPC and HTTP: before, any principal could ask whether another
    service's group held a webhook to some URL or a stream on some topic (30 or 0)."""
    beat = subscription("shipping")  # billing's grants name the group billing only
    beat.text_data = '[{"topic": "orders", "url": "grpc_stream"}]'
    async with grpc.aio.insecure_channel(guarded_sidecar.grpc_target) as channel:
        heartbeat = HeartbeatServiceStub(channel).heartbeat
        assert status(await heartbeat(beat)) == "20"
        own = subscription("billing")
        own.text_data = beat.text_data
        assert status(await heartbeat(own)) == "30"  # allowed: just not held here
    entities = json.dumps([{"topic": "orders", "url": "http://127.0.0.1:9/hook"}])
    form = {"consumerGroup": "shipping", "clientType": "SUB", "heartbeatEntities": entities}
    headers = {"username": "billing", "passwd": TOKEN}
    assert (await post(guarded_sidecar, "203", form, **headers))["retCode"] == 20
    form["consumerGroup"] = "billing"
    assert (await post(guarded_sidecar, "203", form, **headers))["retCode"] == 30


async def test_nothing_on_slash_answers_a_caller_without_credentials(
    guarded_sidecar: Sidecar,
) -> None:
    """With auth on, POST / without credentials is refused (20) whatever its code, an
    unknown one included (it was answered 6, a probe of what the port serves); GET / is
    401 like any other path (it was 405); and Expect: 100-continue is refused before the
    body is invited."""
    url = f"{guarded_sidecar.http_url}/"
    async with aiohttp.ClientSession() as session:
        for code in ("999", "104"):
            async with session.post(url, data={"a": "b"}, headers={"code": code}) as answer:
                assert answer.status == 200
                assert (await answer.json())["retCode"] == 20
        async with session.get(url) as answer:
            assert answer.status == 401
        async with session.post(
            url, data={"a": "b"}, headers={"code": "104"}, expect100=True
        ) as answer:
            assert (await answer.json())["retCode"] == 20
        creds = {"code": "999", "username": "billing", "passwd": TOKEN}
        async with session.post(url, data={"a": "b"}, headers=creds, expect100=True) as answer:
            assert (await answer.json())["retCode"] == 6  # known caller: told the code is bad


async def test_asking_for_replies_on_a_reply_inbox_needs_publish_there(
    guarded_sidecar: Sidecar,
) -> None:
    """With auth on, an event published with a replyto naming a reply inbox is refused
    unless the caller may publish on that inbox, on every way in (the HTTP API, gRPC
    Publish and PublishBatch, Apache EventMesh over gRPC and HTTP): a responder publishes
    its reply there on the event's behalf, so a publisher who saw another caller's
    request could otherwise have it answered. The same events without it are stored."""
    inbox = "eventmesh.inbox.0123456789abcdef"
    asking = {"replyto": inbox, "correlationid": "someone-elses-request"}
    plain = Event(type="t", source="/s", id="plain-1", data={"n": 1})
    forged = plain.replace(id="forged-1", extensions=asking)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    url = f"{guarded_sidecar.http_url}/topics/orders/events"
    async with aiohttp.ClientSession() as session:
        for event, expected in ((forged, 403), (plain, 202)):
            body = json.dumps({**event.to_dict(), "data": event.data}).encode()
            headers = {**bearer, "Content-Type": "application/cloudevents+json"}
            async with session.post(url, data=body, headers=headers) as answer:
                assert answer.status == expected, await answer.text()
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    async with grpc.aio.insecure_channel(guarded_sidecar.grpc_target) as channel:
        native = EventMeshStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await native.Publish(
                pb.PublishRequest(topic="orders", event=to_proto(forged)), metadata=metadata
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "replyto" in (refused.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await native.PublishBatch(
                pb.PublishBatchRequest(topic="orders", batch=to_proto_batch([plain, forged])),
                metadata=metadata,
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        stored = await native.Publish(
            pb.PublishRequest(topic="orders", event=to_proto(plain)), metadata=metadata
        )
        assert stored.stored == 1
        apache = PublisherServiceStub(channel)
        assert status(await apache.publish(cloud_event("orders", **asking))) == "20"
        assert status(await apache.publish(cloud_event("orders"))) == "0"
        batch = CloudEventBatch(events=[cloud_event("orders"), cloud_event("orders", **asking)])
        assert status(await apache.batchPublish(batch)) == "20"
    content = json.dumps({**EVENT_JSON, **asking})
    headers = {"username": "billing", "passwd": TOKEN, "protocoltype": "cloudevents"}
    assert (await post(guarded_sidecar, "104", {"content": content}, **headers))["retCode"] == 20
    content = json.dumps(EVENT_JSON)
    assert (await post(guarded_sidecar, "104", {"content": content}, **headers))["retCode"] == 0


EVENT_JSON = {"specversion": "1.0", "id": "h-2", "source": "/s", "type": "t", "subject": "orders"}


async def test_http_codes(open_sidecar: Sidecar) -> None:
    """An unknown request code is answered 6; an EventMeshMessage becomes an event with its
    content as text data and its uniqueid as id."""
    assert (await post(open_sidecar, "999", {}))["retCode"] == 6
    sub = open_sidecar.mesh.subscribe("apache.emm", "g")
    async with sub:
        form = {"topic": "apache.emm", "content": "hello", "uniqueid": "u-7", "ttl": "4000"}
        answer = await post(open_sidecar, "104", form, protocoltype="eventmeshmessage")
        assert answer["retCode"] == 0
        with anyio.fail_after(10):
            delivery = await anext(aiter(sub))
        await delivery.ack()
    event = delivery.event
    assert (event.id, event.subject, event.data, event.type) == (
        "u-7",
        "apache.emm",
        "hello",
        "eventmeshmessage",
    )
    assert event.extensions == {}


async def test_a_stream_reports_errors_as_messages_and_goes_on(open_sidecar: Sidecar) -> None:
    """A bad subscription on a stream is answered by a message with a status code and a
    JSON list, not a gRPC error; the stream then subscribes and pushes events with
    seqnum and uniqueid, and a heartbeat says 0 for it and 30 for a topic not held."""
    async with grpc.aio.insecure_channel(open_sidecar.grpc_target) as channel:
        call = ConsumerServiceStub(channel).subscribeStream()
        bad = subscription("sg")
        bad.text_data = "not json"
        await call.write(bad)
        with anyio.fail_after(10):
            answer = await call.read()
        assert status(answer) == "7"
        assert answer.text_data == "[]"
        assert "passwd" not in answer.attributes
        await call.write(subscription("sg", "apache.stream"))
        with anyio.fail_after(10):
            answer = await call.read()
        assert status(answer) == "0"
        heartbeat = HeartbeatServiceStub(channel).heartbeat
        beat = subscription("sg")
        beat.text_data = '[{"topic": "apache.stream", "url": "grpc_stream"}]'
        assert status(await heartbeat(beat)) == "0"
        beat.text_data = '[{"topic": "apache.elsewhere", "url": "grpc_stream"}]'
        assert status(await heartbeat(beat)) == "30"
        await open_sidecar.mesh.publish("apache.stream", Event(type="t", source="/s", id="p-1"))
        with anyio.fail_after(10):
            pushed = await call.read()
        assert pushed.id == "p-1"
        assert pushed.attributes["uniqueid"].ce_string == "p-1"
        assert pushed.attributes["seqnum"].ce_string == "1"
        assert pushed.attributes["subject"].ce_string == "apache.stream"
        await call.done_writing()
        call.cancel()


async def test_broadcasting_streams_each_get_every_event(open_sidecar: Sidecar) -> None:
    """Two BROADCASTING streams of one group each get every event, where CLUSTERING
    members of a group would share them."""

    def broadcast(group: str, topic: str) -> CloudEvent:
        msg = subscription(group, topic)
        msg.text_data = json.dumps([{"topic": topic, "mode": "BROADCASTING", "type": "ASYNC"}])
        return msg

    async with grpc.aio.insecure_channel(open_sidecar.grpc_target) as channel:
        calls = [ConsumerServiceStub(channel).subscribeStream() for _ in range(2)]
        for call in calls:
            await call.write(broadcast("fans", "apache.broadcast"))
            with anyio.fail_after(10):
                assert status(await call.read()) == "0"
        for n in range(3):
            event = Event(type="t", source="/s", id=f"b-{n}")
            await open_sidecar.mesh.publish("apache.broadcast", event)
        for call in calls:
            with anyio.fail_after(10):
                got = [(await call.read()).id for _ in range(3)]
            assert sorted(got) == ["b-0", "b-1", "b-2"]  # events of no key: any order
            await call.done_writing()
            call.cancel()


async def test_http_heartbeat(open_sidecar: Sidecar) -> None:
    """Code 203 says 0 for a webhook subscription the sidecar holds, 30 for one it does
    not, and 207 ends it."""
    hook = "http://127.0.0.1:9/hook"
    items = json.dumps([{"topic": "apache.beat", "mode": "CLUSTERING", "type": "ASYNC"}])
    form = {"consumerGroup": "beats", "topic": items, "url": hook}
    assert (await post(open_sidecar, "206", form))["retCode"] == 0
    entities = json.dumps([{"topic": "apache.beat", "url": hook}])
    beat = {"consumerGroup": "beats", "clientType": "SUB", "heartbeatEntities": entities}
    assert (await post(open_sidecar, "203", beat))["retCode"] == 0
    gone = {"consumerGroup": "beats", "topic": '["apache.beat"]', "url": hook}
    assert (await post(open_sidecar, "207", gone))["retCode"] == 0
    assert (await post(open_sidecar, "203", beat))["retCode"] == 30


async def test_subscription_lists_are_bounded(open_sidecar: Sidecar) -> None:
    """A subscribe naming more than MAX_ITEMS topics is answered 21 and starts nothing."""
    topics = [f"apache.many.{i}" for i in range(MAX_ITEMS + 1)]
    before = len(open_sidecar.mesh.subscriptions)
    async with grpc.aio.insecure_channel(open_sidecar.grpc_target) as channel:
        answer = await ConsumerServiceStub(channel).subscribe(
            subscription("many", *topics, url="http://127.0.0.1:9/hook")
        )
    assert status(answer) == "21"
    assert len(open_sidecar.mesh.subscriptions) == before


async def test_request_reply(open_sidecar: Sidecar) -> None:
    """requestReply answers with the reply a handler returns, status "0"."""

    async def answer(event: Event) -> Event:
        return Event(type="order.answer", source="/svc", id="r-1", data={"ok": True})

    async with (
        open_sidecar.mesh.subscribe("apache.rr", "svc", handler=answer),
        grpc.aio.insecure_channel(open_sidecar.grpc_target) as channel,
    ):
        reply = await PublisherServiceStub(channel).requestReply(cloud_event("apache.rr"))
    assert status(reply) == "0"
    assert (reply.id, reply.type) == ("r-1", "order.answer")


def _stream_reply(pushed: CloudEvent, data: str) -> CloudEvent:
    """What the SDK's stream consumer sends back for a handler's reply: the pushed
    event's attributes, marked as a subscription reply, with the reply's data."""
    reply = CloudEvent()
    reply.CopyFrom(pushed)
    reply.attributes["submessagetype"].ce_string = "subscription_reply"
    reply.text_data = data
    return reply


async def test_a_stream_answers_only_requests_it_was_pushed_and_once(
    open_sidecar: Sidecar,
) -> None:
    """A reply on a stream reaches the requester only for a request pushed on that
    stream, and only the first time. A stream that never subscribed, sending a reply
    with the inbox and correlation id that any subscriber of the request topic sees,
    is ignored: before, it answered other callers' requests without logging in."""
    mesh = open_sidecar.mesh
    topic = "apache.rr.stream"
    async with grpc.aio.insecure_channel(open_sidecar.grpc_target) as channel:
        responder = ConsumerServiceStub(channel).subscribeStream()
        await responder.write(subscription("responders", topic))
        with anyio.fail_after(10):
            assert status(await responder.read()) == "0"
        stranger = ConsumerServiceStub(channel).subscribeStream()  # never subscribes
        async with anyio.create_task_group() as tg:
            answers: list[Event] = []

            async def ask() -> None:
                answers.append(await mesh.request(topic, Event(type="q", source="/s"), timeout=10))

            tg.start_soon(ask)
            with anyio.fail_after(10):
                pushed = await responder.read()
            assert pushed.attributes["replyto"].ce_string.startswith("eventmesh.inbox.")
            await stranger.write(_stream_reply(pushed, '"forged"'))
            await stranger.done_writing()
            with anyio.fail_after(10):  # the stranger's stream ends: its message was read
                assert await stranger.read() is grpc.aio.EOF
            assert not answers
            await responder.write(_stream_reply(pushed, '"real"'))
        assert [event.data for event in answers] == ["real"]
        sub = mesh.subscribe(pushed.attributes["replyto"].ce_string, "late", start="earliest")
        async with sub:
            await responder.write(_stream_reply(pushed, '"again"'))  # answered already
            await responder.done_writing()
            with anyio.fail_after(10):
                assert await responder.read() is grpc.aio.EOF
            stored = [d.event async for d in _drain(sub)]
        correlation = pushed.attributes["correlationid"].ce_string
        assert [e.data for e in stored if e.extensions["correlationid"] == correlation] == ["real"]


async def _drain(sub: Any) -> AsyncIterator[Any]:
    """The deliveries a subscription has now, acked, until none comes for 0.5 s."""
    iterator = aiter(sub)
    while True:
        with anyio.move_on_after(0.5):
            delivery = await anext(iterator)
            await delivery.ack()
            yield delivery
            continue
        return


async def test_http_request_reply(open_sidecar: Sidecar) -> None:
    """Code 101 answers with the reply as Apache EventMesh's ReplyMessage JSON in retMsg."""

    async def answer(event: Event) -> Event:
        return Event(type="order.answer", source="/svc", id="r-2", data="fine")

    async with open_sidecar.mesh.subscribe("apache.rr.http", "svc", handler=answer):
        form = {"topic": "apache.rr.http", "content": "how?", "uniqueid": "q-1", "ttl": "10000"}
        reply = await post(open_sidecar, "101", form, protocoltype="eventmeshmessage")
    assert reply["retCode"] == 0
    message = json.loads(reply["retMsg"])
    assert (message["topic"], message["body"]) == ("apache.rr.http", "fine")
    assert message["properties"]["correlationid"] == "q-1"
    assert message["properties"]["id"] == "r-2"


async def test_webhook_answers_follow_ret_code() -> None:
    """A push answered retCode 0 or 3 is delivered, 2 or 5 is retried, HTTP 410 stops."""
    answers = iter(
        [
            web.json_response({"retCode": 0}),
            web.json_response({"retCode": 5}),
            web.json_response({"retCode": 3}),
            web.Response(status=410),
        ]
    )
    forms: list[Any] = []

    async def hook(request: web.Request) -> web.Response:
        forms.append((request.headers["code"], dict(await request.post())))
        return next(answers)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with WebhookSession() as session:
            sink = ApacheWebhookSink(
                f"http://127.0.0.1:{port}/hook", session=session, topic="t", cluster="c"
            )
            event = Event(
                type="t",
                source="/s",
                id="w-1",
                extensions={"traceid": "x", "origin": URI("https://example.com/o")},
            )
            assert await sink(event) == []
            with pytest.raises(DeliveryError) as retry:
                await sink(event)
            assert retry.value.retryable
            assert await sink(event) == []
            with pytest.raises(DeliveryError) as stop:
                await sink(event)
            assert not stop.value.retryable
    finally:
        await runner.cleanup()
    code, form = forms[0]
    assert code == "105"
    assert json.loads(form["content"])["id"] == "w-1"
    assert (form["topic"], form["uniqueid"], json.loads(form["extFields"])) == (
        "t",
        "w-1",
        {"traceid": "x", "origin": "https://example.com/o"},
    )


async def test_the_limits_are_the_documented_ones() -> None:
    """docs/operations.md ("Limits: Apache EventMesh's clients") gives these bounds."""
    text = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    section = text.split("### Limits: Apache EventMesh's clients", 1)[1].split("###", 1)[0]
    for name, value in (
        ("MAX_ITEMS", MAX_ITEMS),
        ("MAX_SPEC", MAX_SPEC),
        ("MAX_ATTRIBUTES", MAX_ATTRIBUTES),
        ("MAX_BATCH", MAX_BATCH),
    ):
        assert f"| {value:,} | none (fixed: `" in section, name
        assert name in section


async def test_a_hostile_ret_code_reads_as_none() -> None:
    """A retCode of thousands of digits (which int() refuses) reads as no code, like any
    other unreadable answer, instead of raising out of the delivery."""
    from eventmesh.server.apache_wire import _ret_code

    assert _ret_code(b'{"retCode": "' + b"1" * 5_000 + b'"}') is None
    assert _ret_code(b'{"retCode": "2"}') == 2
    assert _ret_code(b'{"retCode": 0}') == 0
