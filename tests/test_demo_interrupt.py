"""Ctrl-C stops the demo even when Python swallows the KeyboardInterrupt its handler raises (an exception
raised while a __del__ runs is only printed: "Exception ignored in ...")."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest

import demo.__main__ as demo_main
from demo.show import Outcome


class FakeStack:
    """Stands in for the demo's servers: two instances that stay up, and whether it was closed."""

    closed = False

    def __init__(self, database_url: str | None) -> None:
        self.real_redis, self.redis_url, self.database_url = False, "unix:///fake", "sqlite:///fake"

    def start(self) -> tuple[SimpleNamespace, SimpleNamespace]:
        up = SimpleNamespace(poll=lambda: None)
        return SimpleNamespace(proc=up, port=1), SimpleNamespace(proc=up, port=2)

    def close(self) -> None:
        FakeStack.closed = True


# The swallowed KeyboardInterrupt is what this test makes happen: pytest reports it as unraisable.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_interrupt_swallowed_inside_a_del_still_stops_the_demo_with_ctrl_cs_status(monkeypatch):
    class InterruptedWhileCollected:
        def __del__(self) -> None:
            demo_main._interrupt(signal.SIGINT, None)  # as if Ctrl-C arrived while this object was collected

    ran = []

    def scene(stack, a, b) -> Outcome:
        InterruptedWhileCollected()  # collected at once: its KeyboardInterrupt is printed, not raised
        ran.append("first")
        return Outcome(True, "done")

    monkeypatch.setattr(demo_main, "Stack", FakeStack)
    monkeypatch.setattr(demo_main, "_signals_received", [], raising=False)
    monkeypatch.setitem(demo_main.SCENES, "first", (scene, "swallows an interrupt"))
    monkeypatch.setitem(demo_main.SCENES, "second", (lambda *_: ran.append("second") or Outcome(True, ""), "-"))
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        status = demo_main.main(["--scene", "first", "--scene", "second"])
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    assert status == 130 and ran == ["first"] and FakeStack.closed
