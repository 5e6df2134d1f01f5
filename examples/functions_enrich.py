"""A serverless enrichment function: orders in, enriched orders out on a reply topic.

    python examples/functions_enrich.py

``enrich`` is declared with ``@mesh.function``: it runs for every order on ``orders``,
drops test orders (``raise Drop``), and returns an enriched event, which the mesh
publishes to ``orders.enriched`` with a ``causationid`` naming the order it came from.
The same function could be declared in mesh.yaml::

    functions:
      - name: enrich
        trigger: {topic: orders, filter: {exact: {type: com.example.order.created}}}
        handler: "functions_enrich:enrich"
        reply_to: orders.enriched
"""

from __future__ import annotations

import anyio

from eventmesh import Drop, Event, Mesh

CUSTOMERS = {"c-1": "gold", "c-2": "silver"}
"""Stands in for the customer service the function would look up."""


async def enrich(event: Event) -> Event:
    """Add the customer's tier to an order."""
    order = event.data
    if order.get("test"):
        raise Drop("a test order")  # acked, not retried, no reply
    return Event(
        type="com.example.order.enriched",
        source="/functions/enrich",
        subject=event.subject,
        data={**order, "tier": CUSTOMERS.get(order["customer"], "standard")},
    )


async def main() -> None:
    mesh = Mesh()
    mesh.function(
        topic="orders",
        filter={"exact": {"type": "com.example.order.created"}},
        reply_to="orders.enriched",
        concurrency=8,
        timeout="5s",
        delivery={"max_attempts": 3, "backoff": {"initial": "50ms"}},
    )(enrich)

    orders = [
        {"id": 1, "customer": "c-1"},
        {"id": 2, "customer": "c-2"},
        {"id": 3, "customer": "c-9", "test": True},
        {"id": 4, "customer": "c-9"},
    ]
    async with mesh:
        causes = {}
        for order in orders:
            event = Event(
                type="com.example.order.created",
                source="/shop",
                subject=f"order-{order['id']}",
                data=order,
            )
            causes[event.id] = order["id"]
            await mesh.publish("orders", event)
        with anyio.fail_after(10):
            async with mesh.subscribe("orders.enriched", "printer", start="earliest") as sub:
                seen = 0
                async for delivery in sub:
                    reply = delivery.event
                    cause = causes[reply.extensions["causationid"]]
                    print(f"enriched order {reply.data['id']}: tier {reply.data['tier']} "
                          f"(caused by order {cause})")  # fmt: skip
                    await delivery.ack()
                    seen += 1
                    if seen == 3:
                        break
        (runner,) = mesh.functions
        stats = runner.stats
        with anyio.fail_after(10):
            # Counters have no event to await; poll them (bounded by fail_after).
            while stats.invocations < len(orders) or stats.in_flight:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        print(f"enrich: {stats.invocations} invocations, {stats.replies} replies, "
              f"{stats.dropped} dropped")  # fmt: skip


if __name__ == "__main__":
    anyio.run(main)
