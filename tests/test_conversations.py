"""Conversation storage and the context built from it (unit level).

The end-to-end twins, through gunicorn and Redis, are in
test_conversations_e2e.py and test_moderation_e2e.py.
"""

from __future__ import annotations

from chatapp.store.conversations import MemoryHistory
from chatapp.store.conversations import StoredMessage
from chatapp.turns.start import cacheable
from chatapp.turns.start import context
from chatapp.upstream.base import Message


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def user(text: str, turn: str = "") -> StoredMessage:
    return StoredMessage("user", text, 0.0, turn)


def answer(text: str, turn: str = "") -> StoredMessage:
    return StoredMessage("assistant", text, 0.0, turn)


# -- lifetime: TTL from the end of the last turn ----------------------------------


def history(clock: Clock) -> MemoryHistory:
    return MemoryHistory(10, turn_seconds=100, clock=clock)


def test_a_conversation_is_held_while_its_turn_runs() -> None:
    clock = Clock()
    store = history(clock)
    store.create("c1", "v:1", user("hi", "t1"))
    clock.now += 50  # an answer slower than the TTL
    store.append("c1", answer("hello", "t1"))
    assert [m.content for m in store.messages("c1")] == ["hi", "hello"]
    clock.now += 9.9
    assert store.owner("c1") == "v:1"
    clock.now += 0.2  # TTL after the answer, not after the question
    assert store.owner("c1") is None


def test_a_turn_without_an_answer_renews_from_its_end() -> None:
    clock = Clock()
    store = history(clock)
    store.create("c1", "v:1", user("hi", "t1"))
    clock.now += 5
    store.touch("c1")  # the turn ended with an error
    clock.now += 10.1
    assert store.owner("c1") is None


def test_an_expired_conversation_is_never_recreated() -> None:
    clock = Clock()
    store = history(clock)
    store.create("c1", "v:1", user("hi", "t1"))
    store.append("c1", answer("hello", "t1"))
    clock.now += 11
    store.append("c1", answer("late", "t2"))
    store.touch("c1")
    assert store.owner("c1") is None
    assert store.messages("c1") == []


def test_a_new_question_never_shortens_a_hold() -> None:
    clock = Clock()
    store = history(clock)
    store.create("c1", "v:1", user("one", "t1"))
    store.append("c1", user("two", "t2"))  # a second turn, while the first runs
    clock.now += 105
    assert store.owner("c1") == "v:1"


# -- context: answered exchanges only --------------------------------------------


def test_context_holds_only_answered_exchanges() -> None:
    stored = [
        user("hello", "t1"),
        answer("hi there", "t1"),
        user("mod:flag the forbidden text", "t2"),  # blocked: no answer
        user("failed before any text", "t3"),
        user("how are you?", "t4"),
        answer("fine", "t4"),
    ]
    assert context(stored, 10_000) == [
        Message("user", "hello"),
        Message("assistant", "hi there"),
        Message("user", "how are you?"),
        Message("assistant", "fine"),
    ]


def test_an_answer_that_lands_late_answers_only_its_own_question() -> None:
    stored = [
        user("slow question", "t1"),
        user("blocked question", "t2"),
        answer("slow answer", "t1"),
    ]
    assert context(stored, 10_000) == [
        Message("user", "slow question"),
        Message("assistant", "slow answer"),
    ]


def test_messages_stored_before_turns_were_named_pair_by_order() -> None:
    stored = [user("old q"), answer("old a"), user("old unanswered"), user("q2")]
    assert context(stored, 10_000) == [
        Message("user", "old q"),
        Message("assistant", "old a"),
    ]


def test_context_keeps_its_bound_and_opens_with_the_user() -> None:
    stored = [user("a" * 10, "t1"), answer("b" * 10, "t1")] * 3
    kept = context(stored, 35)
    assert sum(len(m.content) for m in kept) <= 35
    assert kept[0].role == "user"


# -- the answer cache ------------------------------------------------------------------


def test_only_questions_without_personal_data_are_cacheable() -> None:
    assert cacheable("When are you open on Sundays?")
    assert cacheable("Do you ship to 42 countries?")
    assert not cacheable("Is my order 55123 for Jane Roe shipped?")
    assert not cacheable("Mail jane@example.com please")
    assert not cacheable("Call +44 20 7946 0958")
    assert not cacheable("My card 4111\u00a01111\u00a01111\u00a01111 failed")
