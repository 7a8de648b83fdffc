"""The scan's garbage-collector settings: what they freeze, and that they restore the collector's state."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from agent._decoding import collector_paused, long_lived


@pytest.fixture
def collector() -> Iterator[None]:
    """The collector as the test found it, whatever the test did to it."""
    enabled = gc.isenabled()
    try:
        yield
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()
        else:
            gc.disable()


def _cycles(count: int) -> list[dict[str, object]]:
    made: list[dict[str, object]] = []
    for _ in range(count):
        node: dict[str, object] = {}
        node["self"] = node
        made.append(node)
    return made


@pytest.mark.usefixtures("collector")
@pytest.mark.parametrize("enabled", [True, False])
def test_long_lived_freezes_what_was_made_and_restores_the_collector(enabled: bool) -> None:
    gc.enable() if enabled else gc.disable()
    gc.unfreeze()
    gc.collect()
    before = gc.get_freeze_count()
    with long_lived():
        assert not gc.isenabled()
        made = _cycles(5_000)
    assert gc.get_freeze_count() >= before + len(made)
    assert gc.isenabled() is enabled


@pytest.mark.usefixtures("collector")
def test_long_lived_freezes_and_restores_when_start_up_fails() -> None:
    gc.enable()
    gc.unfreeze()
    before = gc.get_freeze_count()
    made: list[dict[str, object]] = []

    def start_up() -> None:
        with long_lived():
            made.extend(_cycles(100))
            raise RuntimeError("the catalogue does not load")

    with pytest.raises(RuntimeError):
        start_up()
    assert gc.isenabled()
    assert gc.get_freeze_count() >= before + len(made)


@pytest.mark.usefixtures("collector")
@pytest.mark.parametrize("enabled", [True, False])
def test_collector_paused_restores_the_state_it_found(enabled: bool) -> None:
    gc.enable() if enabled else gc.disable()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled() is enabled


@pytest.mark.usefixtures("collector")
def test_a_pause_that_freezes_leaves_no_collection_due_behind_it() -> None:
    """What was allocated during the pause is frozen: the next allocation does not collect."""
    gc.enable()
    gc.unfreeze()
    gc.collect()
    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.callbacks.append(count)
    try:
        with collector_paused(freeze=True):
            made = _cycles(20_000)  # far past the young generation's threshold
        assert not collections
        assert gc.get_freeze_count() >= len(made)
        after = [[] for _ in range(100)]  # would collect at once had the count stayed
        assert not collections
        with collector_paused():
            more = _cycles(20_000)
        _ = [[] for _ in range(10)]
        assert collections  # without freezing, the pause only held the collection back
    finally:
        gc.callbacks.remove(count)
    assert len(after) + len(more) == 20_100
