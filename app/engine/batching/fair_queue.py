"""The batcher's queue: inputs grouped by request, taken round-robin across requests.

A request's inputs wait as one group, and the groups take turns: each turn takes one
input of the group at the front, which then goes to the back. So a request of one
text that arrives behind four requests of 256 rides in the next forward pass instead
of waiting for all 1,024 inputs ahead of it, a large request still gets a share of
every pass, and turns carry over from one batch to the next, so no request starves
however many are waiting.

Priority: a request may be queued as low priority (an explanation's perturbations,
hundreds of inputs that nobody waits on interactively). Low-priority groups run first
come, first served, after every normal group: `round_robin` and `take` give every
waiting normal input before the first low one, and a low request whole before the next.
Admission prices a low request whole (all the work queued ahead of it), so one admitted
later never slows one admitted earlier, as taking turns would: each keeps its price.
How many low inputs a batch may take, and when, and how the two kinds count against the
queue limits, is the batcher's rule (app/engine/batching/admission.py).
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
        self._low_groups: deque[_Group[Item]] = deque()  # low priority: after all of those
        # Normal groups of more than one item: the only ones a new request does not wait
        # for whole (tokens_served_before), kept so admission need not walk the rest.
        self._deep: set[_Group[Item]] = set()
        self.low_count = 0  # low-priority items queued
        self._arrivals = itertools.count()
        self._count = 0
        self.tokens = 0
        self._low_tokens = 0

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    @property
    def low_tokens(self) -> int:
        """Tokens of the low-priority items queued."""
        return self._low_tokens

    @property
    def normal_count(self) -> int:
        """Items of normal priority queued."""
        return self._count - self.low_count

    def add(self, items: list[Item], *, low: bool = False) -> None:
        """One request's inputs; the request takes its first turn after every waiting one
        of its priority."""
        if items:
            group = _Group(next(self._arrivals), deque(items))
            (self._low_groups if low else self._groups).append(group)
            if len(items) > 1 and not low:
                self._deep.add(group)
            tokens = sum(item.tokens for item in items)
            self._count += len(items)
            self.tokens += tokens
            if low:
                self.low_count += len(items)
                self._low_tokens += tokens

    def oldest(self) -> Item:
        """The input that has waited longest among those taken next (normal ones while any
        wait): the head of the earliest request (a request's inputs arrive together). The
        queue must not be empty."""
        groups = self._groups or self._low_groups
        return min(groups, key=lambda group: group.arrival).items[0]

    def round_robin(self) -> Iterator[Item]:
        """Every queued item in the order `take` would take them: normal ones first, taking
        turns; then the low ones, request by request."""
        for depth in itertools.count():
            turn = [group.items[depth] for group in self._groups if depth < len(group.items)]
            if not turn:
                break
            yield from turn
        for group in self._low_groups:
            yield from group.items

    def take(self, count: int) -> list[Item]:
        """Remove and return the first `count` items of `round_robin()`."""
        taken: list[Item] = []
        for groups in (self._groups, self._low_groups):
            while len(taken) < count and groups:
                group = groups.popleft()
                item = group.items.popleft()
                taken.append(item)
                if groups is self._low_groups:
                    self.low_count -= 1
                    self._low_tokens -= item.tokens
                if len(group.items) == 1:
                    self._deep.discard(group)
                if group.items and groups is self._low_groups:
                    groups.appendleft(group)  # first come, first served: it goes on
                elif group.items:
                    groups.append(group)  # it had its turn: to the back
        self._count -= len(taken)
        self.tokens -= sum(item.tokens for item in taken)
        return taken

    def remove(self, dead: Callable[[Item], bool]) -> list[Item]:
        """Remove and return every item for which `dead(item)` is true (a pure test: it may
        be asked twice of an item)."""
        removed: list[Item] = []
        everything = (*self._groups, *self._low_groups)
        if not any(dead(item) for group in everything for item in group.items):
            return removed  # the common case: nothing to rebuild
        for group in everything:
            kept: deque[Item] = deque()
            for item in group.items:
                (removed if dead(item) else kept).append(item)
            group.items = kept
        self._groups = deque(group for group in self._groups if group.items)
        self._low_groups = deque(group for group in self._low_groups if group.items)
        # Rare and already a walk over everything: the totals are counted afresh.
        self._deep = {group for group in self._groups if len(group.items) > 1}
        low_items = [item for group in self._low_groups for item in group.items]
        self.low_count = len(low_items)
        self._low_tokens = sum(item.tokens for item in low_items)
        self._count -= len(removed)
        self.tokens -= sum(item.tokens for item in removed)
        return removed

    def clear(self) -> list[Item]:
        """Remove and return everything."""
        return self.remove(lambda _: True)

    def tokens_served_before(self, count: int, *, low: bool = False) -> int:
        """Tokens that run before a new request of `count` inputs is done: round-robin
        takes up to `count` inputs of every normal group now waiting before its last one;
        a low-priority request waits for everything queued (first come, first served)."""
        normal_tokens = self.tokens - self._low_tokens
        if low:
            return self.tokens
        if count < 1:
            return 0
        # Every group of its priority whole, less what lies past `count` in the deep ones
        # (a walk over every waiting request per admission was O(n^2) under load).
        past = sum(
            item.tokens
            for group in self._deep
            for item in itertools.islice(group.items, count, None)
        )
        return normal_tokens - past
