"""The batcher's queue: inputs grouped by request, taken round-robin across requests.

A request's inputs wait as one group, and the groups take turns: each turn takes one
input of the group at the front, which then goes to the back. So a request of one
text that arrives behind four requests of 256 rides in the next forward pass instead
of waiting for all 1,024 inputs ahead of it, a large request still gets a share of
every pass, and turns carry over from one batch to the next, so no request starves
however many are waiting.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar


class HasTokens(Protocol):
    @property
    def tokens(self) -> int: ...


Item = TypeVar("Item", bound=HasTokens)


@dataclass(eq=False)
class _Group(Generic[Item]):
    arrival: int  # arrival order of its request: the lowest has waited longest
    items: deque[Item] = field(default_factory=deque)


class FairQueue(Generic[Item]):
    """Groups of items (one per request); items leave one group's turn at a time."""

    def __init__(self) -> None:
        self._groups: deque[_Group[Item]] = deque()  # the front group has the next turn
        self._arrivals = itertools.count()
        self._count = 0
        self.tokens = 0

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def add(self, items: list[Item]) -> None:
        """One request's inputs; the request takes its first turn after every waiting one."""
        if items:
            self._groups.append(_Group(next(self._arrivals), deque(items)))
            self._count += len(items)
            self.tokens += sum(item.tokens for item in items)

    def oldest(self) -> Item:
        """The input that has waited longest: the head of the earliest request (a request's
        inputs arrive together). The queue must not be empty."""
        return min(self._groups, key=lambda group: group.arrival).items[0]

    def round_robin(self) -> Iterator[Item]:
        """Every queued item in the order `take` would take them."""
        for depth in itertools.count():
            turn = [group.items[depth] for group in self._groups if depth < len(group.items)]
            if not turn:
                return
            yield from turn

    def take(self, count: int) -> list[Item]:
        """Remove and return the first `count` items of `round_robin()`."""
        taken: list[Item] = []
        groups = self._groups
        while len(taken) < count and groups:
            group = groups.popleft()
            taken.append(group.items.popleft())
            if group.items:
                groups.append(group)  # it had its turn: to the back
        self._count -= len(taken)
        self.tokens -= sum(item.tokens for item in taken)
        return taken

    def remove(self, dead: Callable[[Item], bool]) -> list[Item]:
        """Remove and return every item for which `dead(item)` is true (a pure test: it may
        be asked twice of an item)."""
        removed: list[Item] = []
        if not any(dead(item) for group in self._groups for item in group.items):
            return removed  # the common case: nothing to rebuild
        for group in self._groups:
            kept: deque[Item] = deque()
            for item in group.items:
                (removed if dead(item) else kept).append(item)
            group.items = kept
        if removed:
            self._groups = deque(group for group in self._groups if group.items)
            self._count -= len(removed)
            self.tokens -= sum(item.tokens for item in removed)
        return removed

    def clear(self) -> list[Item]:
        """Remove and return everything."""
        return self.remove(lambda _: True)

    def tokens_served_before(self, count: int) -> int:
        """Tokens that run before a new request of `count` inputs is done: round-robin
        takes up to `count` inputs of every group now waiting before its last one."""
        return sum(
            sum(item.tokens for item in itertools.islice(group.items, count))
            for group in self._groups
        )
