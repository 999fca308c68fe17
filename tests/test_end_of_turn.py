"""tessera.server.ops.end_of_turn: what is noted in one turn of the event loop is handed over together at its end."""

from __future__ import annotations

import asyncio
import threading

from tessera.server.ops.end_of_turn import EndOfTurn


async def test_items_of_one_turn_are_processed_together_at_its_end_and_later_ones_apart():
    batches: list[list[int]] = []
    turn = EndOfTurn(batches.append)
    for n in range(5):
        turn.add(n)
    assert batches == []  # not before the end of this turn
    await asyncio.sleep(0)
    turn.add(5)
    await asyncio.sleep(0)
    assert batches == [[0, 1, 2, 3, 4], [5]]


async def test_flush_hands_over_now_and_leaves_nothing_for_the_turns_end():
    batches: list[list[str]] = []
    turn = EndOfTurn(batches.append)
    turn.add("a")
    turn.flush()
    assert batches == [["a"]]
    await asyncio.sleep(0)
    assert batches == [["a"]]


def test_without_a_running_loop_each_item_is_processed_at_once():
    batches: list[list[str]] = []
    turn = EndOfTurn(batches.append)
    turn.add("a")
    turn.add("b")
    assert batches == [["a"], ["b"]]


def test_the_lock_is_held_while_items_are_processed():
    lock = threading.RLock()
    taken_elsewhere: list[bool] = []

    def process(items: list[str]) -> None:
        def probe() -> None:
            got = lock.acquire(blocking=False)
            if got:
                lock.release()
            taken_elsewhere.append(got)

        prober = threading.Thread(target=probe)
        prober.start()
        prober.join()

    EndOfTurn(process, lock=lock).add("x")
    assert taken_elsewhere == [False]


async def test_mark_asks_for_the_turns_processing_without_an_item_and_nothing_due_is_not_processed():
    batches: list[list[str]] = []
    turn = EndOfTurn(batches.append)
    turn.flush()
    assert batches == []  # nothing was due
    turn.mark()
    turn.mark()
    await asyncio.sleep(0)
    assert batches == [[]]  # once, at the end of the turn
    turn.mark()
    turn.add("a")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert batches == [[], ["a"]]
