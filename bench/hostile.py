"""What hostile input costs: every parser and regex over client input, at its worst.

    .venv/bin/python -m bench.hostile                    # the table (about a minute)
    .venv/bin/python -m bench.hostile --sweep            # also search for worse text
    .venv/bin/python -m bench.hostile --root /tmp/before # the same, of another checkout

A gevent worker serves every request, stream and poll in one event loop, and
this work is C code that never yields: whatever one request costs here, every
other client of the worker waits for. So each step that reads client input
is timed on the worst input known for it, at the largest size a request can
bring (the 64 KiB body limit, gunicorn's 8190-byte header field, the token
caps), and the table printed is RELIABILITY.md's "Hostile input cost".

The inputs are the ones each step is weakest against (long runs of the
characters its patterns repeat, unterminated strings, deep nesting, many
parts). `--sweep` also tries every string of up to three characters over the
masking patterns' alphabet, repeated to 8,000 characters, and times the five
worst at full size. Times are the best and the median of five runs (one
run when it takes over two seconds), in milliseconds, on this machine.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable

BODY = 64 * 1024  # CHATAPP_MAX_BODY_BYTES' default
FIELD = 8190  # gunicorn's limit_request_field_size: one header's value
MESSAGE = 65_000  # the longest message a 64 KiB JSON body can carry
SLOW = 2.0  # seconds: time a case once only when it takes longer


def timed(run: Callable[[], object]) -> tuple[float, float]:
    """Best and median milliseconds of five runs (one, if it takes over SLOW).

    The best is the step's own cost; the median adds what a busy machine did
    meanwhile.
    """
    samples: list[float] = []
    for _ in range(5):
        started = time.perf_counter()
        try:
            run()
        except Exception:  # refusals are the expected outcome of most cases
            pass
        samples.append(time.perf_counter() - started)
        if samples[0] > SLOW:
            break
    return min(samples) * 1000, statistics.median(samples) * 1000


def repeat(pattern: str, size: int) -> str:
    return (pattern * (size // len(pattern) + 1))[:size]


def json_cases() -> list[tuple[str, bytes]]:
    many_keys = b"{" + b",".join(b'"%d": 0' % n for n in range(6500)) + b"}"
    return [
        ('unterminated string of \\" (the old 18 s body)', b'"' + b'\\"' * 32760),
        ("[ x 65,536 (deep, unclosed)", b"[" * BODY),
        ("[ x 32,768 then ] x 32,768", b"[" * (BODY // 2) + b"]" * (BODY // 2)),
        ("21,000 empty arrays in one", b'{"a": [' + b"[]," * 21000 + b"[]]}"),
        ("21,000 empty objects in one", b'{"a": [' + b"{}," * 21000 + b"{}]}"),
        ("10,900 escaped lone surrogates", b'{"a": "' + b"\\ud800" * 10900 + b'"}'),
        ("6,500 keys", many_keys),
        ("one 65,000-character string", b'{"message": "' + b"a" * 65000 + b'"}'),
    ]


def form_cases() -> list[tuple[str, str, bytes]]:
    boundary = "b" * 70
    parts = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="f{n}"\r\n\r\nx\r\n'
        for n in range(900)
    )
    multipart = f"multipart/form-data; boundary={boundary}"
    return [
        (
            "urlencoded: 21,845 empty fields",
            "application/x-www-form-urlencoded",
            b"a=&" * (BODY // 3),
        ),
        (
            "urlencoded: one field of %41 escapes",
            "application/x-www-form-urlencoded",
            b"message=" + b"%41" * ((BODY - 8) // 3),
        ),
        (
            "multipart: 900 parts",
            multipart,
            (parts + f"--{boundary}--\r\n").encode()[:BODY],
        ),
        (
            "multipart: one part, 64 KiB of CR",
            multipart,
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="m"\r\n\r\n'
                + "\r" * 65000
                + f"\r\n--{boundary}--\r\n"
            ).encode()[:BODY],
        ),
        (
            "multipart: 64 KiB of boundary look-alikes",
            multipart,
            (f"--{boundary}\r\n" + "\r\n--" * 21000).encode()[:BODY],
        ),
    ]


def run_parsers(rows: list[tuple[str, str, str, tuple[float, float]]]) -> None:
    from chatapp import create_app
    from chatapp.web.bodies import parse_json_object
    from chatapp.web.bodies import read_fields

    for name, raw in json_cases():
        rows.append(
            (
                "JSON body",
                name,
                f"{len(raw):,} B",
                timed(lambda r=raw: parse_json_object(r)),
            )
        )
    app = create_app()  # its own limits on forms, as served

    for name, content_type, raw in form_cases():

        def form(ct: str = content_type, body: bytes = raw) -> object:
            with app.test_request_context(
                "/api/chat", method="POST", data=body, content_type=ct
            ):
                return read_fields()

        rows.append(("form body", name, f"{len(raw):,} B", timed(form)))


def run_tokens(rows: list[tuple[str, str, str, tuple[float, float]]]) -> None:
    from chatapp.botcheck import BotCheck
    from chatapp.store.challenges import MemorySpentSolutions
    from chatapp.tokens import TokenSigner
    from chatapp.tokens import verify_wp_sso

    signer = TokenSigner(("k" * 32,), page_ttl=7200, stream_ttl=600)
    garbage = "eyJ2IjoieCJ9." + "A" * 2030
    rows.append(
        (
            "page token",
            "2,048 characters, bad signature",
            "2,048 ch",
            timed(lambda: signer.read_page_token(garbage)),
        )
    )
    check = BotCheck(("k" * 32,), MemorySpentSolutions(), max_number=100_000)
    payload = base64.b64encode(
        json.dumps(
            {
                "algorithm": "SHA-256",
                "challenge": "0" * 64,
                "number": 1,
                "salt": "?" + "expires=1&" * 150,
                "signature": "0" * 64,
            }
        ).encode()
    ).decode()[:2048]
    rows.append(
        (
            "bot-check solution",
            "2,048 characters, a salt of 150 parameters",
            f"{len(payload):,} ch",
            timed(lambda: check.verify(payload)),
        )
    )
    sso = "eyJhbGciOiJIUzI1NiJ9." + "e" * 4000 + ".sig"
    rows.append(
        (
            "WordPress SSO",
            "4,096 characters, bad signature",
            f"{len(sso):,} ch",
            timed(lambda: verify_wp_sso(sso, "s" * 32)),
        )
    )


def run_headers(rows: list[tuple[str, str, str, tuple[float, float]]]) -> None:
    from chatapp.addresses import address_key
    from chatapp.web import parse
    from chatapp.web.cors import normalise_origin
    from chatapp.web.logs import _WELL_FORMED_ID

    cases: list[tuple[str, str, Callable[[], object]]] = [
        (
            "X-Forwarded-For",
            "8,190 B: 1,170 comma-separated addresses",
            lambda: [
                address_key(a.strip()) for a in repeat("1.2.3.4,", FIELD).split(",")
            ],
        ),
        (
            "X-Forwarded-For",
            "8,190 B: one unparseable entry",
            lambda: address_key(repeat("[1:", FIELD)),
        ),
        (
            "X-Request-ID",
            "8,190 B of id characters",
            lambda: _WELL_FORMED_ID.fullmatch(repeat("a", FIELD)),
        ),
        (
            "Idempotency-Key",
            "8,190 B, printable",
            lambda: parse.KEY.match(repeat("!", FIELD)),
        ),
        (
            "Last-Event-ID",
            "8,190 B of digits",
            lambda: parse._EVENT_ID.match(repeat("9", FIELD)),
        ),
        (
            "turn id in the path",
            "4,094 B of id characters",
            lambda: parse.ID.match(repeat("a", 4094)),
        ),
        (
            "Origin",
            "8,190 B",
            lambda: normalise_origin("https://" + repeat("a.", FIELD - 8)),
        ),
    ]
    for what, name, run in cases:
        rows.append((what, name, "", timed(run)))


HOSTILE_TEXT = [
    ("a", "a letter run (e-mail local part)"),
    ("1-", "digits and dashes (phone)"),
    ("1.", "digits and dots"),
    ("1 ", "digits and spaces"),
    ("1\u00a0-", "digits, no-break spaces, dashes"),
    ("a.", "letters and dots (e-mail domain)"),
    ("a@", "letters and @"),
    ("eyJ-", "JWT openings"),
    ("(1)", "bracketed digits"),
    ("+1 ", "plus signs and digits"),
    ("1111 ", "card-sized groups (Luhn checks)"),
    ("\u200b", "zero-width spaces only"),
]


def run_text(
    rows: list[tuple[str, str, str, tuple[float, float]]], sweep: bool
) -> None:
    from chatapp import text
    from chatapp.masking import mask

    patterns = list(HOSTILE_TEXT)
    if sweep:
        patterns += [(p, "found by the sweep") for p in sweep_worst(mask, 5)]
    for pattern, why in patterns:
        message = repeat(pattern, MESSAGE)
        rows.append(
            (
                "mask() (CHATAPP_LOG_PROMPTS=1)",
                f"{pattern!r} repeated: {why}",
                f"{MESSAGE:,} ch",
                timed(lambda m=message: mask(m)),
            )
        )
    try:
        from chatapp.turns.start import cacheable
    except ImportError:  # an older checkout: the cache took every question
        pass
    else:
        for pattern in ("1111 ", "1-"):
            message = repeat(pattern, MESSAGE)
            rows.append(
                (
                    "cacheable() (CHATAPP_CACHE_TTL on)",
                    f"{pattern!r} repeated",
                    f"{MESSAGE:,} ch",
                    timed(lambda m=message: cacheable(m)),
                )
            )
    from chatapp.upstream import demo

    spaces = repeat(" a", MESSAGE)
    rows.append(
        (
            "demo provider's word split",
            "' a' repeated (it quotes the question)",
            f"{MESSAGE:,} ch",
            timed(lambda: demo._PIECES.findall(spaces)),
        )
    )
    surrogates = "\ud800" * MESSAGE
    rows.append(
        (
            "text.scrub",
            "65,000 lone surrogates",
            f"{MESSAGE:,} ch",
            timed(lambda: text.scrub(surrogates)),
        )
    )


def sweep_worst(mask: Callable[[str], str], keep: int) -> list[str]:
    alphabet = "aA1. @-/+()_eyJsk=:\u00a0\u200b"
    found = []
    for size in (1, 2, 3):
        for combo in itertools.product(alphabet, repeat=size):
            pattern = "".join(combo)
            sample = repeat(pattern, 8000)
            started = time.perf_counter()
            mask(sample)
            found.append((time.perf_counter() - started, pattern))
    found.sort(reverse=True)
    return [pattern for _, pattern in found[:keep]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", help="measure the chatapp of this checkout")
    parser.add_argument("--sweep", action="store_true", help="search for worse text")
    args = parser.parse_args(argv)
    if args.root:
        sys.path.insert(0, args.root)
    import chatapp

    rows: list[tuple[str, str, str, tuple[float, float]]] = []
    run_parsers(rows)
    run_tokens(rows)
    run_headers(rows)
    run_text(rows, args.sweep)
    print(f"chatapp at {chatapp.__file__.rsplit('/', 2)[0]}")
    print(f"Python {platform.python_version()}, {platform.machine()}\n")
    print("| step | worst input known | size | best ms | median ms |")
    print("| --- | --- | ---: | ---: | ---: |")
    for what, name, size, (best, median) in rows:
        print(f"| {what} | {name} | {size} | {best:,.1f} | {median:,.1f} |")


if __name__ == "__main__":
    main()
