"""The memory twins' expiring map, on a clock the test moves by hand."""

from __future__ import annotations

from chatapp.store.expiring import ExpiringMap


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_lives_its_ttl_and_not_a_moment_longer() -> None:
    clock = Clock()
    m: ExpiringMap[str, str] = ExpiringMap(clock)
    m.set("a", "1", 10)
    clock.now += 9.99
    assert m.get("a") == "1"
    clock.now += 0.01
    assert m.get("a") is None
    assert len(m) == 0


def test_set_replaces_value_and_ttl() -> None:
    clock = Clock()
    m: ExpiringMap[str, str] = ExpiringMap(clock)
    m.set("a", "1", 10)
    clock.now += 5
    m.set("a", "2", 10)
    clock.now += 9
    assert m.get("a") == "2"


def test_add_sets_only_an_absent_or_expired_key() -> None:
    clock = Clock()
    m: ExpiringMap[str, int] = ExpiringMap(clock)
    assert m.add("a", 1, 10)
    assert not m.add("a", 2, 10)
    assert m.get("a") == 1
    clock.now += 10
    assert m.add("a", 3, 10)
    assert m.get("a") == 3


def test_pop_returns_a_living_value_once() -> None:
    clock = Clock()
    m: ExpiringMap[str, int] = ExpiringMap(clock)
    m.set("a", 1, 10)
    assert m.pop("a") == 1
    assert m.pop("a") is None
    m.set("b", 2, 1)
    clock.now += 1
    assert m.pop("b") is None


def test_expire_resets_and_extend_never_shortens() -> None:
    clock = Clock()
    m: ExpiringMap[str, int] = ExpiringMap(clock)
    m.set("a", 1, 100)
    assert m.expire("a", 5)
    clock.now += 5
    assert m.get("a") is None
    assert not m.expire("a", 5)
    m.set("b", 2, 100)
    assert m.extend("b", 5)  # already lives longer: unchanged
    clock.now += 99
    assert m.get("b") == 2
    assert m.extend("b", 50)
    clock.now += 49
    assert m.get("b") == 2
    assert not m.extend("gone", 5)


def test_entries_nobody_reads_are_swept_and_reported_once() -> None:
    clock = Clock()
    expired: list[tuple[str, int]] = []
    m: ExpiringMap[str, int] = ExpiringMap(
        clock, sweep_every=30, on_expire=lambda k, v: expired.append((k, v))
    )
    m.set("old", 1, 10)
    m.set("young", 2, 100)
    m.set("popped", 3, 10)
    m.pop("popped")
    clock.now += 20
    assert expired == []  # no sweep yet, and nobody read "old"
    clock.now += 10
    m.set("other", 4, 100)  # any operation sweeps once sweep_every passed
    assert expired == [("old", 1)]
    assert sorted(m) == ["other", "young"]
    m.purge()
    assert expired == [("old", 1)]


def test_a_read_of_an_expired_entry_reports_it() -> None:
    clock = Clock()
    expired: list[str] = []
    m: ExpiringMap[str, int] = ExpiringMap(
        clock, sweep_every=1000, on_expire=lambda k, v: expired.append(k)
    )
    m.set("a", 1, 10)
    clock.now += 10
    assert m.get("a") is None
    assert m.get("a") is None
    assert expired == ["a"]


def test_purge_drops_everything_expired_at_once() -> None:
    clock = Clock()
    m: ExpiringMap[int, int] = ExpiringMap(clock, sweep_every=1000)
    for i in range(10):
        m.set(i, i, i + 1)
    clock.now += 5
    m.purge()
    assert list(m) == [5, 6, 7, 8, 9]
    assert len(m) == 5
