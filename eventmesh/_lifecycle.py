"""The one ``__aexit__`` of the objects an ``async with`` block closes."""

from __future__ import annotations

from types import TracebackType

__all__ = ["ClosedOnExit"]


class ClosedOnExit:
    """Leaving ``async with`` awaits :meth:`close`, which each class defines (entering
    differs from class to class: each defines its ``__aenter__``)."""

    __slots__ = ()

    async def close(self) -> None:
        raise NotImplementedError

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        await self.close()
        return None
