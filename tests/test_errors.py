"""chatapp's exceptions are one tree, and each refusal answers SPEC's code."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
from flask import Flask

import chatapp
from chatapp import errors
from chatapp.errors import ApiError
from chatapp.errors import ChatappError
from chatapp.web.errors import api_error_response

# Subclasses a library's error on purpose, for that library to handle it.
OUTSIDE: set[str] = set()  # every exception chatapp raises is under the root

# SPEC's "POST /api/chat" table, the owner's API and the bot check: every
# leaf of ApiError, with the status and `error.code` it answers.
SPEC = {
    errors.InvalidInput: (400, "invalid_input"),
    errors.MessageTooLong: (400, "message_too_long"),
    errors.Unauthorized: (401, "unauthorized"),
    errors.Forbidden: (403, "forbidden"),
    errors.OriginNotAllowed: (403, "origin_not_allowed"),
    errors.SolutionRefused: (403, "challenge_required"),
    errors.TokenInvalid: (403, "invalid_token"),
    errors.TokenExpired: (403, "token_expired"),
    errors.SSOInvalid: (403, "forbidden"),
    errors.SSOExpired: (403, "forbidden"),
    errors.NotFound: (404, "not_found"),
    errors.RateLimited: (429, "rate_limited"),
    errors.QuotaExceeded: (429, "quota_exceeded"),
    errors.SiteBudgetExhausted: (429, "site_budget_exhausted"),
    errors.TooManyStreams: (429, "too_many_streams"),
    errors.OverCapacity: (503, "over_capacity"),
}


def chatapp_exceptions() -> dict[str, type[BaseException]]:
    """Every public exception class defined in a chatapp module."""
    found: dict[str, type[BaseException]] = {}
    for module_info in pkgutil.walk_packages(chatapp.__path__, "chatapp."):
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
                and not name.startswith("_")
            ):
                found[f"{value.__module__}.{name}"] = value
    return found


def subclasses(root: type[ApiError]) -> set[type[ApiError]]:
    below = set(root.__subclasses__())
    for cls in list(below):
        below |= subclasses(cls)
    return below


def test_every_public_exception_is_under_the_root() -> None:
    found = chatapp_exceptions()
    assert "chatapp.errors.TokenInvalid" in found  # the walk found the tree
    outside = {
        name
        for name, cls in found.items()
        if not issubclass(cls, ChatappError) and name not in OUTSIDE
    }
    assert outside == set()
    assert set(OUTSIDE) <= set(found)  # an exemption for a class that is gone


def test_the_token_and_bot_check_errors_are_the_ones_their_modules_raise() -> None:
    from chatapp import botcheck
    from chatapp import tokens

    assert tokens.TokenInvalid is errors.TokenInvalid
    assert tokens.SSOExpired is errors.SSOExpired
    assert botcheck.SolutionRefused is errors.SolutionRefused
    # As itsdangerous' SignatureExpired is a BadSignature: catching the
    # branch catches the leaf.
    assert issubclass(errors.TokenExpired, errors.TokenInvalid)
    assert issubclass(errors.SSOExpired, errors.SSOInvalid)


def test_spec_names_every_refusal() -> None:
    assert subclasses(ApiError) - {errors.LimitReached} == set(SPEC)


@pytest.mark.parametrize("leaf", list(SPEC), ids=lambda c: c.__name__)
def test_each_refusal_answers_its_spec_code(leaf: type[ApiError]) -> None:
    status, code = SPEC[leaf]
    with Flask(__name__).app_context():
        response = api_error_response(leaf(retry_after=7))
    assert response.status_code == status
    body = response.get_json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]  # every leaf has words of its own
    assert response.headers["Retry-After"] == "7"
    assert response.headers["Cache-Control"] == "no-store"
