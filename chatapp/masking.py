"""Mask personal data and secrets in text before it may reach a log line.

Pure functions, no I/O. Each kind is replaced by a bracketed label, so a log
reader sees that something was there but never what:

  [key]    API keys and tokens: known prefixes, JWTs, long letter-digit runs,
           40-character base64 runs (AWS secret keys)
  [email]  e-mail addresses, in any script (jürgen@bücher.de)
  [card]   payment-card numbers (13-19 digits that pass the Luhn check)
  [phone]  phone numbers (7-15 digits, optional +, brackets and separators)

The text is normalised first: every Unicode space (no-break, narrow no-break,
ideographic, ...) becomes a plain space, full-width ASCII becomes ASCII, and
zero-width and bidi-control characters are dropped, so that "4111 1111 ..."
written with U+202F or U+200B between its groups is still a card. Keys go
first (a key may hold an @ or digit runs), then e-mail addresses, then runs
of digit groups: a card anywhere in a run (also when other digits follow it),
then what is left of the run as a phone.

Every pattern runs in time linear in the text (RELIABILITY.md, "Hostile
input cost"): each may only start where a run of its characters starts
(a look-behind), and the digit runs are possessive, so no position is
scanned more than a few times whatever the input.
"""

from __future__ import annotations

import itertools
import re

# Unicode spaces (category Zs) and tabs -> " "; full-width ASCII -> ASCII.
_NORMALISE: dict[int, str | int | None] = {
    ord(c): " "
    for c in "\t\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u202f\u205f\u3000"
}
_NORMALISE.update({code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)})
# Invisible: soft hyphen, Mongolian vowel separator, zero-width space and
# joiners, bidi marks and controls, word joiner, invisible operators, BOM.
_NORMALISE.update(
    dict.fromkeys(
        [0x00AD, 0x180E, 0xFEFF, *range(0x200B, 0x2010), *range(0x202A, 0x202F)]
        + [*range(0x2060, 0x2065), *range(0x2066, 0x2070)]
    )
)

_KEY_CHARS = "A-Za-z0-9_-"
_KNOWN_KEYS = re.compile(
    rf"""
    (?<![{_KEY_CHARS}])(?:
        sk-[A-Za-z0-9_-]{{16,}}+                      # OpenAI, Anthropic (sk-ant-...)
      | (?:AKIA|ASIA)[0-9A-Z]{{16}}                   # AWS access key ids
      | gh[pousr]_[A-Za-z0-9]{{20,}}+                 # GitHub tokens
      | github_pat_[A-Za-z0-9_]{{20,}}+
      | xox[abposr]-[A-Za-z0-9-]{{10,}}+              # Slack tokens
      | AIza[0-9A-Za-z_-]{{30,}}+                     # Google API keys
      | eyJ[A-Za-z0-9_-]{{5,}}+\.eyJ[A-Za-z0-9_-]{{5,}}+\.[A-Za-z0-9_-]*+  # JWTs
    )
    """,
    re.VERBOSE,
)
# A run of base64 characters, slashes included, as long as an AWS secret
# access key (40) or longer, with upper- and lower-case letters and digits.
_B64_RUN = re.compile(r"(?<![A-Za-z0-9_/+=-])[A-Za-z0-9_/+=-]{40,}+")
# A long run of letters and digits with both in it looks like a secret; a
# word, a number or a path segment does not.
_LONG_RUN = re.compile(rf"(?<![{_KEY_CHARS}])[{_KEY_CHARS}]{{20,}}+(?![{_KEY_CHARS}])")
# Local part and domain labels in any script (\w is Unicode); the domain's
# last label is checked by _mask_email: letters only, at least two.
_EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]++@[\w-]++(?:\.[\w-]++)++")
# Digit groups joined by separators people type or paste: one to three
# spaces, or one of - . / with an optional space on each side; a bracketed
# group may touch the next one: "+44 (0)20 7946 0958".
_DIGIT_RUN = re.compile(
    r"(?<![\w+])\+?\(?\d++\)?(?:(?:[ ]{1,3}|[ ]?[-./][ ]?|(?<=\)))\(?\d++\)?)*+"
)
_DIGITS = re.compile(r"\d++")
_NOT_PHONE = re.compile(
    r"\d+\.\d+"  # a decimal number
    r"|\d{4}[-./]\d{1,2}[-./]\d{1,2}"  # an ISO date (or 2024/05/01)
    r"|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}"  # a day-month-year date
)
CARD_DIGITS = range(13, 20)
# A card is written whole or in groups that start with four digits (4-4-4-4,
# 4-6-5, ...): no card begins with a shorter group, so "1 2 3 4 ..." costs
# no Luhn check at all.
CARD_FIRST_GROUP = 4
# Each digit doubled, then its two digits added (Luhn), as one character.
_DOUBLED = str.maketrans("0123456789", "0246813579")
PHONE_DIGITS = range(7, 16)


def normalise(text: str) -> str:
    """Turn Unicode spaces into spaces, full-width ASCII into ASCII; drop
    invisible characters. One pass, one character in for at most one out."""
    return text.translate(_NORMALISE)


def mask(text: str) -> str:
    """Replace keys, e-mail addresses, card numbers and phone numbers by labels."""
    text = normalise(text)
    text = _KNOWN_KEYS.sub("[key]", text)
    text = _B64_RUN.sub(_mask_b64_run, text)
    text = _LONG_RUN.sub(_mask_long_run, text)
    text = _EMAIL.sub(_mask_email, text)
    return _DIGIT_RUN.sub(_mask_digit_run, text)


def has_personal_data(text: str) -> bool:
    """Tell whether masking would hide anything in `text`."""
    return mask(text) != normalise(text)


def luhn_valid(digits: str) -> bool:
    """Tell whether a string of digits passes the Luhn checksum."""
    if not digits.isascii():  # other scripts' digits: ٤١١١ is 4111
        digits = "".join(str(int(c)) for c in digits)
    kept = sum(map(int, digits[-1::-2]))
    doubled = sum(map(int, digits[-2::-2].translate(_DOUBLED)))
    return (kept + doubled) % 10 == 0


def _mixed(run: str) -> bool:
    return any(c.isdigit() for c in run) and any(c.isalpha() for c in run)


def _mask_long_run(match: re.Match[str]) -> str:
    run = match.group()
    return "[key]" if _mixed(run) else run


def _mask_b64_run(match: re.Match[str]) -> str:
    run = match.group()
    upper = any(c.isupper() for c in run)
    lower = any(c.islower() for c in run)
    digit = any(c.isdigit() for c in run)
    return "[key]" if upper and lower and digit else run


def _mask_email(match: re.Match[str]) -> str:
    address = match.group()
    top = address.rpartition(".")[2]
    return "[email]" if len(top) >= 2 and top.isalpha() else address


def _mask_digit_run(match: re.Match[str]) -> str:
    """Mask the cards in a run of digit groups, then the phones around them."""
    run = match.group()
    if len(run) < PHONE_DIGITS[0]:  # too short to hold seven digits
        return run
    spans = [m.span() for m in _DIGITS.finditer(run)]
    sizes = [end - start for start, end in spans]
    if sum(sizes) < PHONE_DIGITS[0]:
        return run
    could_hold_card = sum(sizes) >= CARD_DIGITS[0] and max(sizes) >= CARD_FIRST_GROUP
    cards = _cards(run, spans, sizes) if could_hold_card else []
    out: list[str] = []
    done = 0  # run[:done] is in `out` already
    free = 0  # the first group not yet part of a card
    for first, last in cards:
        out.append(_mask_phones(run, sizes[free:first], done, spans[first][0]))
        out.append("[card]")
        done = spans[last][1]
        free = last + 1
    out.append(_mask_phones(run, sizes[free:], done, len(run)))
    return "".join(out)


def _cards(
    run: str, spans: list[tuple[int, int]], sizes: list[int]
) -> list[tuple[int, int]]:
    """Find the cards in a run: (first group, last group) of each, in order.

    A card starts at a group of four digits or more and ends at a group's end,
    13 to 19 digits on; the longest that passes Luhn wins. Luhn sums come
    from two running totals over the run's digits, so each window costs O(1)
    and a start tries at most 19 windows: linear in the run.
    """
    digits = "".join(run[start:end] for start, end in spans)
    if not digits.isascii():  # other scripts' digits: ٤١١١ is 4111
        digits = "".join(str(int(c)) for c in digits)
    # Each digit as itself (kept) and doubled (Luhn): byte values, 48 + d.
    kept = digits.encode()
    doubled = digits.translate(_DOUBLED).encode()
    # ends_even[p]: the sum of the first p digits weighed for a window whose
    # last digit has an even index (even indexes kept, odd ones doubled);
    # ends_odd[p] likewise for an odd last index.
    even, odd = bytearray(kept), bytearray(doubled)
    even[1::2], odd[1::2] = doubled[1::2], kept[1::2]
    ends_even = [0, *itertools.accumulate(even)]
    ends_odd = [0, *itertools.accumulate(odd)]
    offsets = [0, *itertools.accumulate(sizes)]
    found: list[tuple[int, int]] = []
    first = 0
    while first < len(sizes):
        last = None
        if sizes[first] >= CARD_FIRST_GROUP:
            a = offsets[first]
            for j in range(first, len(sizes)):
                b = offsets[j + 1]
                if b - a > CARD_DIGITS[-1]:
                    break
                totals = ends_even if (b - 1) % 2 == 0 else ends_odd
                if (
                    b - a in CARD_DIGITS
                    and (totals[b] - totals[a] - 48 * (b - a)) % 10 == 0
                ):
                    last = j
        if last is None:
            first += 1
        else:
            found.append((first, last))
            first = last + 1
    return found


def _mask_phones(run: str, sizes: list[int], start: int, end: int) -> str:
    """Mask `run[start:end]` as a phone if its groups (`sizes` digits) make one.

    A stretch too long for one phone is tried space-separated piece by piece:
    "0612345678 0698765432" is two phones.
    """
    text = run[start:end]
    digits = sum(sizes)
    if digits < PHONE_DIGITS[0]:
        return text
    if digits in PHONE_DIGITS:
        return _phone(text)
    return " ".join(
        _phone(piece) if len(piece) >= PHONE_DIGITS[0] else piece
        for piece in text.split(" ")
    )


def _phone(text: str) -> str:
    core = text.strip(" -./")
    digits = sum(map(str.isdigit, core))
    if digits not in PHONE_DIGITS or _NOT_PHONE.fullmatch(core):
        return text
    return text.replace(core, "[phone]", 1)
