"""The fair queue: requests leave round-robin, with exact counts and token totals."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from app.engine.batching.fair_queue import FairQueue


@dataclass(eq=False)
class Input:
    name: str
    tokens: int = 1


def queue_of(*requests: str) -> FairQueue[Input]:
    """One request per string, one input per character: "aaa", "b" -> a0 a1 a2, b0."""
    queue: FairQueue[Input] = FairQueue()
    for request in requests:
        queue.add([Input(f"{char}{i}") for i, char in enumerate(request)])
    return queue


def names(items: list[Input]) -> list[str]:
    return [item.name for item in items]


def test_requests_take_turns() -> None:
    queue = queue_of("aaaa", "bbbb", "c")
    assert names(list(queue.round_robin())) == [
        "a0",
        "b0",
        "c0",
        "a1",
        "b1",
        "a2",
        "b2",
        "a3",
        "b3",
    ]
    assert names(queue.take(4)) == ["a0", "b0", "c0", "a1"]
    # Turns carry over between batches: b, whose turn was next, goes first.
    assert names(queue.take(3)) == ["b1", "a2", "b2"]
    assert names(queue.take(10)) == ["a3", "b3"]
    assert len(queue) == 0 and queue.tokens == 0 and not queue


def test_oldest_is_the_head_of_the_earliest_request() -> None:
    queue = queue_of("ab", "c")
    assert queue.oldest().name == "a0"
    queue.take(1)
    assert queue.oldest().name == "b1"  # the first request still waits longest


def test_no_request_starves_when_more_wait_than_a_batch_holds() -> None:
    queue = queue_of(*(chr(ord("a") + i) * 3 for i in range(6)))  # six requests of three
    first, second = queue.take(4), queue.take(4)
    assert names(first) == ["a0", "b0", "c0", "d0"]
    assert names(second) == ["e0", "f0", "a1", "b1"]  # e and f before a's second turn


def test_remove_keeps_the_order_of_what_is_left() -> None:
    queue = queue_of("aaa", "bb", "c")
    removed = queue.remove(lambda item: item.name in {"a1", "c0"})
    assert names(removed) == ["a1", "c0"]
    assert names(list(queue.round_robin())) == ["a0", "b0", "a2", "b1"]
    assert len(queue) == 4


def test_work_before_a_new_request_counts_up_to_its_size_from_each() -> None:
    queue: FairQueue[Input] = FairQueue()
    queue.add([Input("a", 10)] * 5)
    queue.add([Input("b", 3)] * 2)
    # A new request of 3 inputs finishes after 3 of a's and both of b's.
    assert queue.tokens_served_before(3) == 3 * 10 + 2 * 3
    assert queue.tokens_served_before(1) == 10 + 3


@given(st.lists(st.lists(st.integers(1, 50), max_size=6), max_size=6), st.integers(0, 40))
def test_take_is_a_prefix_of_round_robin_and_counts_stay_exact(
    requests: list[list[int]], count: int
) -> None:
    queue: FairQueue[Input] = FairQueue()
    for index, lengths in enumerate(requests):
        queue.add([Input(f"{index}.{i}", tokens) for i, tokens in enumerate(lengths)])
    order = list(queue.round_robin())
    taken = queue.take(count)
    assert taken == order[:count]
    rest = order[count:]
    assert list(queue.round_robin()) == rest
    assert len(queue) == len(rest)
    assert queue.tokens == sum(item.tokens for item in rest)


def test_low_priority_inputs_come_after_every_normal_one() -> None:
    queue: FairQueue[Input] = FairQueue()
    queue.add([Input("x0"), Input("x1")], low=True)
    queue.add([Input("a0"), Input("a1")])
    queue.add([Input("y0")], low=True)
    queue.add([Input("b0")])
    # Normal requests take turns; low ones run first come, first served.
    assert names(list(queue.round_robin())) == ["a0", "b0", "a1", "x0", "x1", "y0"]
    assert queue.low_count == 3 and queue.normal_count == 3
    assert queue.oldest().name == "a0"  # the next to go, not the low input queued first
    assert names(queue.take(4)) == ["a0", "b0", "a1", "x0"]
    assert queue.low_count == 2 and queue.normal_count == 0
    assert queue.oldest().name == "x1"  # the earliest low request's head
    removed = queue.remove(lambda item: item.name == "x1")
    assert names(removed) == ["x1"] and queue.low_count == 1 and len(queue) == 1


def test_a_low_priority_request_waits_for_all_normal_work() -> None:
    queue: FairQueue[Input] = FairQueue()
    queue.add([Input("a", 10)] * 5)
    queue.add([Input("x", 4)] * 3, low=True)
    # A normal request runs before any low input; a low one after everything queued.
    assert queue.tokens_served_before(1) == 10
    assert queue.tokens_served_before(1, low=True) == 5 * 10 + 3 * 4


@given(
    st.lists(st.tuples(st.lists(st.integers(1, 50), max_size=5), st.booleans()), max_size=6),
    st.integers(0, 40),
)
def test_take_with_priorities_is_a_prefix_of_round_robin_and_counts_stay_exact(
    requests: list[tuple[list[int], bool]], count: int
) -> None:
    queue: FairQueue[Input] = FairQueue()
    for index, (lengths, low) in enumerate(requests):
        items = [Input(f"{'low' if low else 'n'}{index}.{i}", t) for i, t in enumerate(lengths)]
        queue.add(items, low=low)
    order = list(queue.round_robin())
    kinds = [item.name.startswith("low") for item in order]
    assert kinds == sorted(kinds)  # every normal input before the first low one
    taken = queue.take(count)
    assert taken == order[:count]
    rest = order[count:]
    assert list(queue.round_robin()) == rest
    assert len(queue) == len(rest) and queue.tokens == sum(item.tokens for item in rest)
    assert queue.low_count == sum(item.name.startswith("low") for item in rest)


def tokens_until_done(queue: FairQueue[Input], count: int, *, low: bool) -> int:
    """What the fair queue promises admission, by running it: tokens of other inputs taken
    before the last of a new request of `count` inputs."""
    queue = copy.deepcopy(queue)
    queue.add([Input("new", 0) for _ in range(count)], low=low)
    ahead, left = 0, count
    while left:
        (item,) = queue.take(1)
        if item.name == "new":
            left -= 1
        else:
            ahead += item.tokens
    return ahead


@given(
    st.lists(st.tuples(st.lists(st.integers(1, 50), max_size=5), st.booleans()), max_size=8),
    st.integers(0, 12),
    st.integers(0, 3),
)
def test_work_ahead_of_a_new_request_is_what_taking_turns_serves_before_it(
    requests: list[tuple[list[int], bool]], taken: int, odd_out: int
) -> None:
    queue: FairQueue[Input] = FairQueue()
    for index, (lengths, low) in enumerate(requests):
        queue.add([Input(f"{index}.{i}", t) for i, t in enumerate(lengths)], low=low)
    queue.take(taken)
    if odd_out:  # inputs leave from the middle too (their callers went away)
        queue.remove(lambda item: item.tokens % (odd_out + 1) == 0)
    for count in range(1, 4):
        for low in (False, True):
            assert queue.tokens_served_before(count, low=low) == tokens_until_done(
                queue, count, low=low
            )
