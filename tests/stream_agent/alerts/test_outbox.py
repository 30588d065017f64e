"""The bounded on-disk outbox: order, restart, overflow."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from stream_agent.alerts.outbox import Outbox, OutMessage


def msg(i: int) -> OutMessage:
    return OutMessage("t", str(i).encode())


def test_order_ack_and_restart(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    for i in range(5):
        box.push(msg(i))
    first = box.peek(2)
    assert [m.payload for _, m in first] == [b"0", b"1"]
    box.ack(first[0][0])
    box.close()
    again = Outbox(path)
    assert len(again) == 4
    assert [m.payload for _, m in again.peek(10)] == [b"1", b"2", b"3", b"4"]


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 20), st.lists(st.sampled_from(["push", "deliver"]), max_size=80))
def test_what_is_delivered_is_in_order_and_drops_are_counted(bound: int, steps: list[str]) -> None:
    with tempfile.TemporaryDirectory() as d:
        box = Outbox(Path(d) / "o.sqlite", max_messages=bound)
        pushed = delivered = 0
        got: list[int] = []
        for step in steps:
            if step == "push":
                box.push(msg(pushed))
                pushed += 1
            else:
                for seq, m in box.peek(1):
                    got.append(int(m.payload))
                    box.ack(seq)
                    delivered += 1
            assert len(box) <= bound
        for seq, m in box.peek(1000):
            got.append(int(m.payload))
            box.ack(seq)
        assert got == sorted(got) and len(set(got)) == len(got)
        assert len(got) + box.dropped == pushed
        if pushed <= bound:
            assert box.dropped == 0
        box.close()
