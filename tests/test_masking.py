"""Personal data and secrets never survive masking; ordinary text does."""

from __future__ import annotations

import pytest

from chatapp.masking import luhn_valid
from chatapp.masking import mask


@pytest.mark.parametrize(
    ("kind", "secret"),
    [
        ("email", "jane.doe+chat@example.co.uk"),
        ("email", "J_Smith@mail.example.org"),
        ("phone", "+44 20 7946 0958"),
        ("phone", "(555) 123-4567"),
        ("phone", "555-123-4567"),
        ("phone", "+1.202.555.0143"),
        ("phone", "06 12 34 56 78"),
        ("phone", "5551234567"),
        ("card", "4111 1111 1111 1111"),
        ("card", "5500-0000-0000-0004"),
        ("card", "378282246310005"),
        ("card", "6011111111111117"),
        ("key", "sk-proj-Ab3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW"),
        # Made up, and split so that no scanner takes them for real keys.
        ("key", "sk-ant-" + "api03-abcdefghijklmnop1234567890"),
        ("key", "AKIAIOSFODNN7EXAMPLE"),
        ("key", "ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"),
        ("key", "xoxb-1234567890-abcdefghij"),
        (
            "key",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
            "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        ),
        ("key", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
    ],
)
def test_each_kind_is_masked(kind: str, secret: str) -> None:
    masked = mask(f"Please remember {secret} for me.")
    assert secret not in masked
    assert masked == f"Please remember [{kind}] for me."


def test_several_kinds_in_one_message() -> None:
    text = (
        "Mail a@b.example or call +1 415 555 2671; card 4242 4242 4242 4242, "
        "key sk-" + "abcdefghijklmnopqrstuvwx."
    )
    assert mask(text) == ("Mail [email] or call [phone]; card [card], key [key].")


@pytest.mark.parametrize(
    ("kind", "first", "second"),
    [
        ("email", "a@b.example", "jane.doe@mail.example.org"),
        ("phone", "+1 415 555 2671", "(555) 123-4567"),
        ("card", "4242 4242 4242 4242", "5500-0000-0000-0004"),
        ("key", "sk-" + "abcdefghijklmnopqrstuvwx", "AKIAIOSFODNN7EXAMPLE"),
        ("email", "same@b.example", "same@b.example"),
    ],
)
def test_two_secrets_of_one_kind_are_both_masked(
    kind: str, first: str, second: str
) -> None:
    masked = mask(f"First {first}, then {second}.")
    assert masked == f"First [{kind}], then [{kind}]."


@pytest.mark.parametrize(
    "text",
    [
        "Meet me at 10:30 on 2024-05-01 or 01/05/2024.",
        "Pi is 3.14159265 and e is 2.718281828.",
        "Order 1234 of 42 items costs 19.99 EUR.",
        "A card-like number that fails Luhn: 4111 1111 1111 1112.",
        "internationalization and antidisestablishmentarianism",
        "Mail me at home, not at work.",
        "",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert mask(text) == text


@pytest.mark.parametrize(
    ("digits", "valid"),
    [
        ("4111111111111111", True),
        ("79927398713", True),
        ("79927398710", False),
        ("0", True),
        ("4111111111111112", False),
    ],
)
def test_luhn(digits: str, valid: bool) -> None:
    assert luhn_valid(digits) is valid
