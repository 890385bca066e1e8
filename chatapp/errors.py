"""The exception tree; the JSON answer to an ApiError is web/errors.py's.

ChatappError
  ConfigError      bad settings: start-up stops with one line
  ApiError         a refused request: status + SPEC error code, sent as JSON
  ProviderError    the upstream failed: an SPEC `error` event code
    ContentBlocked   moderation flagged the user's message
  StoreError       shared state (Redis) failed
"""

from __future__ import annotations


class ChatappError(Exception):
    """Base of every error chatapp raises on purpose."""


class ConfigError(ChatappError):
    """A setting is missing or invalid; the message is one line for operators."""


class ApiError(ChatappError):
    """A request refused with a status and a SPEC error code."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.headers = headers or {}


class ProviderError(ChatappError):
    """The provider failed; `code` is one of SPEC's error event codes."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool = False,
        reason: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        # Set when asking again may help (a refused connection, 429, 5xx,
        # overloaded): the metrics label of why. None: never ask again.
        self.reason = reason
        self.retry_after = retry_after  # the provider's Retry-After, seconds


class ContentBlocked(ProviderError):
    """Moderation flagged the user's message: the model is never called."""

    def __init__(self) -> None:
        super().__init__(
            "content_blocked",
            "Sorry, this message can't be answered here because it may break this "
            "site's content rules. Please rephrase it and try again.",
            retryable=False,
        )


class StoreError(ChatappError):
    """Shared state could not be read or written."""
