"""Mask personal data and secrets in text before it may reach a log line.

Pure functions, no I/O. Each kind is replaced by a bracketed label, so a log
reader sees that something was there but never what:

  [key]    API keys and tokens: known prefixes, JWTs, long letter-digit runs
  [email]  e-mail addresses
  [card]   payment-card numbers (13-19 digits that pass the Luhn check)
  [phone]  phone numbers (7-15 digits, optional +, spaces, dots, dashes, brackets)

Keys go first (a key may hold an @ or digit runs), cards before phones (a
card number is also a long digit run).
"""

from __future__ import annotations

import re

_KNOWN_KEYS = re.compile(
    r"""
    \b(?:
        sk-[A-Za-z0-9_-]{16,}                       # OpenAI, Anthropic (sk-ant-...)
      | (?:AKIA|ASIA)[0-9A-Z]{16}                   # AWS access key ids
      | gh[pousr]_[A-Za-z0-9]{20,}                  # GitHub tokens
      | github_pat_[A-Za-z0-9_]{20,}
      | xox[abposr]-[A-Za-z0-9-]{10,}               # Slack tokens
      | AIza[0-9A-Za-z_-]{30,}                      # Google API keys
      | eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*  # JWTs
    )
    """,
    re.VERBOSE,
)
# A long run of letters and digits with both in it looks like a secret; a
# word, a number or a path segment does not.
_LONG_RUN = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{20,}(?![A-Za-z0-9_-])")
_EMAIL = re.compile(
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_PHONE = re.compile(r"(?<![\w+])\+?\(?\d[\d ().-]{5,}\d(?!\w)")
_NOT_PHONE = re.compile(
    r"\d+\.\d+"  # a decimal number
    r"|\d{4}-\d{1,2}-\d{1,2}"  # an ISO date
    r"|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}"  # a day-month-year date
)


def mask(text: str) -> str:
    """Replace keys, e-mail addresses, card numbers and phone numbers by labels."""
    text = _KNOWN_KEYS.sub("[key]", text)
    text = _LONG_RUN.sub(_mask_long_run, text)
    text = _EMAIL.sub("[email]", text)
    text = _CARD.sub(_mask_card, text)
    return _PHONE.sub(_mask_phone, text)


def luhn_valid(digits: str) -> bool:
    """Tell whether a string of digits passes the Luhn checksum."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _mask_long_run(match: re.Match[str]) -> str:
    run = match.group()
    has_digit = any(c.isdigit() for c in run)
    has_letter = any(c.isalpha() for c in run)
    return "[key]" if has_digit and has_letter else run


def _mask_card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group())
    return "[card]" if luhn_valid(digits) else match.group()


def _mask_phone(match: re.Match[str]) -> str:
    candidate = match.group()
    digits = sum(c.isdigit() for c in candidate)
    if not 7 <= digits <= 15 or _NOT_PHONE.fullmatch(candidate):
        return candidate
    return "[phone]"
