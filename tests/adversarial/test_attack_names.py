"""Names and counts a client chooses: topics past limits.max_topics are 429, a name the
backend never accepts or a batch it cannot hold is 400 (never the retryable 503), and
many subscriptions do not make /metrics grow without bound."""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter

import anyio
import msgspec
import pytest
from adversary import MAX_EVENTS, MAX_LABEL_SETS, MAX_SUBSCRIPTIONS, MAX_TOPICS, Sidecar

pytestmark = pytest.mark.anyio

NAME_LIMIT = 249  # limits.max_name_length, the default
METRICS_BOUND = 1024 * 1024


async def test_topics_past_max_topics_are_refused_with_429(sidecar: Sidecar) -> None:
    """Publishing to 250 distinct topics with limits.max_topics 200: the first 200 are
    stored, the rest get 429 LimitExceededError naming the key."""
    statuses: Counter[int] = Counter()
    refused = None
    with sidecar.watch() as watch:
        for n in range(MAX_TOPICS + 50):
            answer = await sidecar.publish(f"topic-{n}")
            statuses[answer.status] += 1
            if answer.status != 202 and refused is None:
                refused = answer
    watch.check()
    assert statuses == {202: MAX_TOPICS, 429: 50}, (statuses, refused)
    assert refused is not None
    assert refused.type == "LimitExceededError", refused
    assert "max_topics" in str(refused.body), refused
    await sidecar.assert_serves(topic="topic-0")  # a known topic: no room for a new one


async def test_browsing_topics_that_do_not_exist_takes_no_room_from_publishers(
    sidecar: Sidecar,
) -> None:
    """A caller who may only browse asks for 250 topics that do not exist (listing,
    finding an id, replaying), with limits.max_topics 200: each is answered, and none
    takes a topic's place, so a producer still publishes to a new topic afterwards."""
    statuses: Counter[int] = Counter()
    with sidecar.watch() as watch:
        for n in range(MAX_TOPICS + 50):
            name = f"nothing-{n}"
            answers = (
                await sidecar.call("GET", f"/topics/{name}/events"),
                await sidecar.call("GET", f"/topics/{name}/events/some-id"),
                await sidecar.call("POST", f"/deadletters/{name}/replay", json={}),
            )
            statuses.update(answer.status for answer in answers)
    watch.check()
    assert statuses == {200: 2 * (MAX_TOPICS + 50), 404: MAX_TOPICS + 50}, statuses
    await sidecar.assert_serves()  # a new topic: there is room for it


async def test_a_one_megabyte_topic_name_is_a_4xx(sidecar: Sidecar) -> None:
    """A topic name of 1 MB in the URL is refused with a 4xx (400: the request line is
    over the server's line limit, 8 KB), never a 5xx, and the sidecar keeps serving."""
    with sidecar.watch() as watch:
        answer = await sidecar.publish("t" * 1024 * 1024)
    watch.check()
    assert 400 <= answer.status < 500, answer
    await sidecar.assert_serves()


@pytest.mark.parametrize(
    "topic", ["t" * (NAME_LIMIT + 1), "t" * 1000], ids=["max_name_length+1", "1000-chars"]
)
async def test_a_topic_name_over_the_length_limit_is_400_not_503(
    sidecar: Sidecar, topic: str
) -> None:
    """A topic name longer than limits.max_name_length is 400 (do not retry), checked
    before publishing, not 503 'not_stored' that tells producers to retry."""
    answer = await sidecar.publish(topic)
    assert answer.status == 400, answer
    assert answer.type in ("RejectedError", "ConfigError"), answer
    assert "max_name_length" in str(answer.body), answer
    await sidecar.assert_serves()


async def test_a_batch_larger_than_the_store_is_400_not_503(sidecar: Sidecar) -> None:
    """A batch of more events than the memory store's max_events can never be stored:
    400 RejectedError, and nothing of it is stored."""
    events = [
        {"specversion": "1.0", "id": f"e{n}", "source": "/a", "type": "t"}
        for n in range(MAX_EVENTS + 1)
    ]
    with sidecar.watch() as watch:
        answer = await sidecar.call(
            "POST",
            "/topics/big-batch/events",
            data=msgspec.json.encode(events),
            headers={"Content-Type": "application/cloudevents-batch+json"},
        )
    watch.check()
    assert answer.status == 400, answer
    assert answer.type == "RejectedError", answer
    assert "max_events" in str(answer.body), answer
    await sidecar.assert_serves(topic="big-batch")


async def test_subscriptions_are_bounded_and_metrics_stay_small(sidecar: Sidecar) -> None:
    """Subscriptions with long ids up to limits.max_subscriptions are created, the next
    ones are 429, and a /metrics scrape stays under 1 MB after events reached them all:
    past metrics.max_label_sets (50 here; a scrape costs about 17 KB per label set of the
    longest names) they are summed under 'other'."""
    statuses: Counter[int] = Counter()
    refused = None
    prefix = "s" * 180
    with sidecar.watch() as watch:
        for n in range(MAX_SUBSCRIPTIONS + 10):
            answer = await sidecar.subscribe("many", f"{prefix}-{n:04d}")
            statuses[answer.status] += 1
            if answer.status != 201 and refused is None:
                refused = answer
        published = await sidecar.publish("many", subject=uuid.uuid4().hex)
        assert published.status == 202, published
        last = f"/subscriptions/{prefix}-{MAX_SUBSCRIPTIONS - 1:04d}"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # every subscription has its series by now
            seen = await sidecar.call("GET", last)
            if seen.status != 200 or seen.body["stats"]["received"]:
                break
            await anyio.sleep(0.1)
        scrape = await sidecar.call("GET", "/metrics", admin=True)
    watch.check()
    assert statuses == {201: MAX_SUBSCRIPTIONS, 429: 10}, (statuses, refused)
    assert refused is not None
    assert refused.type == "LimitExceededError", refused
    assert "max_subscriptions" in str(refused.body), refused
    assert scrape.status == 200
    assert scrape.size < METRICS_BOUND, f"/metrics is {scrape.size} bytes"
    labels = set(re.findall(r'subscription="([^"]*)"', scrape.raw.decode()))
    assert "other" in labels, sorted(labels)[:5]
    assert len(labels) <= MAX_LABEL_SETS + 1, len(labels)
    deleted = await sidecar.call("DELETE", f"/subscriptions/{prefix}-0000")
    assert deleted.status == 204, deleted
    await sidecar.assert_serves(topic="many")
