"""The exception tree: one root, a branch per concept, SPEC's code on each leaf.

In the style of itsdangerous (BadData > BadSignature > BadTimeSignature >
SignatureExpired): catching a branch catches every leaf under it, and a leaf
that answers a request carries SPEC's status and error code as class
attributes. This module knows no Flask, so that turns/, store/ and upstream/
raise these; web/errors.py answers an ApiError as SPEC's JSON, in one place.

ChatappError
  ConfigError               bad settings: start-up stops with one line
  StoreError                shared state (Redis) failed: web answers 503
  ProviderError             the upstream failed: an SPEC `error` event code
    ContentBlocked            moderation flagged the user's message
    UnsupportedParameter      (upstream/http.py) a field the provider refused
  SSEDecodeError            (upstream/sse_decoder.py) a malformed event stream
  TurnCancelled             (turns/run.py) the turn was cancelled
  KnowledgeError            (knowledge/index.py) site knowledge failed
    IndexUnavailable, EmbeddingError, FetchError, UnsupportedContent,
    InvalidDocument
  BodyTooSlow               (web/guards.py) a request body arrived too slowly
  ApiError                  a refused request: status + SPEC error code
    InvalidInput              400 invalid_input
      MessageTooLong            400 message_too_long
    Unauthorized              401 unauthorized
    Forbidden                 403 forbidden
      OriginNotAllowed          403 origin_not_allowed
      SolutionRefused           403 challenge_required   (the bot check)
      TokenInvalid              403 invalid_token        (tokens.py)
        TokenExpired              403 token_expired
      SSOInvalid                403, the /embed refusal page (tokens.py)
        SSOExpired                never answered: degrades to a visitor
    NotFound                  404 not_found
    LimitReached              a turn refused by a limit, with Retry-After
      RateLimited               429 rate_limited
      QuotaExceeded             429 quota_exceeded
      SiteBudgetExhausted       429 site_budget_exhausted
      TooManyStreams            429 too_many_streams
      OverCapacity              503 over_capacity
"""

from __future__ import annotations

from typing import ClassVar


class ChatappError(Exception):
    """Base of every error chatapp raises on purpose."""


class ConfigError(ChatappError):
    """A setting is missing or invalid; the message is one line for operators."""


class StoreError(ChatappError):
    """Shared state could not be read or written."""


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


class ApiError(ChatappError):
    """A request refused with a status and a SPEC error code.

    Raise a leaf; its message is what the client reads (the leaf's own
    `default` when none is given).
    """

    status: ClassVar[int] = 400
    code: ClassVar[str] = "invalid_input"
    default: ClassVar[str] = "The request is not valid."

    def __init__(
        self,
        message: str | None = None,
        *,
        retry_after: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.default
        super().__init__(self.message)
        self.retry_after = retry_after
        self.headers = headers or {}


class InvalidInput(ApiError):
    """Empty message, malformed JSON, bad field types."""

    status, code = 400, "invalid_input"


class MessageTooLong(InvalidInput):
    """A message over CHATAPP_MAX_MESSAGE_CHARS."""

    status, code = 400, "message_too_long"


class Unauthorized(ApiError):
    """The owner's API without the owner's credentials."""

    status, code = 401, "unauthorized"
    default = "This needs the owner's credentials."


class Forbidden(ApiError):
    """Credentials, a token or an origin that is not accepted here."""

    status, code = 403, "forbidden"
    default = "These credentials are not accepted here."


class OriginNotAllowed(Forbidden):
    """An Origin neither chatapp's own nor in CHATAPP_API_ORIGINS."""

    status, code = 403, "origin_not_allowed"
    default = "Pages on this origin may not use the chat API."


class SolutionRefused(Forbidden):
    """The bot check's solution is missing, malformed, forged, wrong, expired
    or used."""

    status, code = 403, "challenge_required"
    default = "The page has not finished its quick bot check; send again in a moment."


class TokenInvalid(Forbidden):
    """The token is missing, malformed, forged or for another purpose."""

    status, code = 403, "invalid_token"
    default = "A valid page token is required."


class TokenExpired(TokenInvalid):
    """The token was genuine but is past its max-age."""

    status, code = 403, "token_expired"
    default = "The page token has expired."


class SSOInvalid(Forbidden):
    """The WordPress SSO token is forged, malformed or breaks a rule.

    /embed answers it with its 403 page, never as JSON.
    """


class SSOExpired(SSOInvalid):
    """The WordPress SSO token was genuine but has expired: an anonymous visitor."""


class NotFound(ApiError):
    """Unknown, foreign or expired: a conversation, a turn, an answer."""

    status, code = 404, "not_found"
    default = "Not found."


class LimitReached(ApiError):
    """A turn refused by a limit; the client may try again after Retry-After."""

    status, code = 429, "rate_limited"
    default = "Too many requests; try again later."


class RateLimited(LimitReached):
    """The client's rate limit is hit (web/limiter.py)."""

    status, code = 429, "rate_limited"


class QuotaExceeded(LimitReached):
    """The client's daily token budget is spent."""

    status, code = 429, "quota_exceeded"
    default = "Today's usage limit is reached; it resets at midnight UTC."


class SiteBudgetExhausted(LimitReached):
    """The site's spend ceiling is reached (CHATAPP_SPEND_LIMITS)."""

    status, code = 429, "site_budget_exhausted"
    default = (
        "This site's chat has reached its spending limit for now; "
        "it opens again when the period ends."
    )


class TooManyStreams(LimitReached):
    """Too many turns generating for this client."""

    status, code = 429, "too_many_streams"
    default = (
        "Too many answers are being written for you at once; wait "
        "for one to finish or stop it."
    )


class OverCapacity(LimitReached):
    """This worker, or a store it needs, cannot take a turn now."""

    status, code = 503, "over_capacity"
    default = "The server is busy; try again in a few seconds."
