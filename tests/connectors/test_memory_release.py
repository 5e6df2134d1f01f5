"""Which events a full memory topic releases: the oldest by store time across its
partitions, ties going to the lower partition, whatever the runs of equal stamps."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from eventmesh import Event
from eventmesh.connectors.memory import _Topic

_EVENT = Event(type="t", source="/s")

# Each partition's stamps, in the order stored (never decreasing, as a batch shares one
# stamp and the clock moves on), drawn from a few values so that ties abound.
_partitions = st.lists(st.lists(st.integers(0, 6), max_size=30).map(sorted), min_size=1, max_size=5)


@settings(max_examples=300, deadline=None)
@given(stamps=_partitions, data=st.data())
def test_a_topic_releases_its_oldest_events_in_store_order(
    stamps: list[list[int]], data: st.DataObject
) -> None:
    topic = _Topic("t", len(stamps), None)
    for part, times in zip(topic.partitions, stamps, strict=True):
        part.events.extend([_EVENT] * len(times))
        part.stamps.extend(float(t) for t in times)
    total = sum(map(len, stamps))
    count = data.draw(st.integers(0, total + 3), label="count")
    # What a merge of the partitions by (stamp, partition) takes first.
    order = sorted((t, p, i) for p, times in enumerate(stamps) for i, t in enumerate(times))
    kept = [len(times) for times in stamps]
    for _, p, _ in order[:count]:
        kept[p] -= 1

    assert topic.release_oldest(count) == min(count, total)
    assert [len(part.events) for part in topic.partitions] == kept
    assert topic.released == min(count, total)
