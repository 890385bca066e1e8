"""Moderation before the model: an OpenAI-compatible `POST …/moderations`.

Through the same HTTP edge as the providers (upstream/http.py): requests'
own pooled connection, a connect timeout, no redirects (one could carry the
key elsewhere), no retries, and a whole-call deadline. The key travels only in
the Authorization header and is never logged. Every failure is
`moderation_unavailable`: the check fails closed.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from typing import Protocol

import gevent
import requests

from chatapp.errors import ContentBlocked
from chatapp.errors import ProviderError
from chatapp.upstream.http import post
from chatapp.upstream.http import request_path
from chatapp.upstream.http import translate_errors
from chatapp.upstream.http import upstream_pool

log = logging.getLogger(__name__)

PATH = "/moderations"
# A verdict is a few hundred bytes; refuse to read a large body at all.
BODY_LIMIT = 256 * 1024


def unavailable() -> ProviderError:
    """The error a failed or late check ends its turn with."""
    return ProviderError(
        "moderation_unavailable",
        "Your message could not be checked just now, so it was not sent. "
        "Please try again in a moment.",
        retryable=True,
    )


class Moderator(Protocol):
    """Decides whether a user's message may go to the model."""

    def check(self, text: str) -> None:
        """Return if `text` may go on; raise ContentBlocked or ProviderError."""


class OpenAIModerator:
    """Check messages with an OpenAI-compatible moderation endpoint."""

    def __init__(
        self,
        *,
        session: requests.Session,
        base_url: str,
        api_key: str,
        connect_timeout: float,
        deadline: float,
    ) -> None:
        self._url = base_url.rstrip("/") + PATH
        self._path = request_path(self._url)
        self._pool = upstream_pool(session, self._url)
        self._headers = {
            "Accept": "application/json",
            "Content-Type": "application/json",
            "Accept-Encoding": "identity",
            "Authorization": f"Bearer {api_key}",
        }
        self._connect_timeout = connect_timeout
        self._deadline = deadline

    def check(self, text: str) -> None:
        """Return if `text` may go on; raise ContentBlocked or ProviderError."""
        if _flagged(self._verdict(text)):
            raise ContentBlocked()

    def _verdict(self, text: str) -> Any:
        timer = gevent.Timeout(self._deadline)
        timer.start()
        response: Any = None
        complete = False
        try:
            response = post(
                self._pool,
                self._path,
                headers=self._headers,
                body={"input": text},
                connect_timeout=self._connect_timeout,
                read_timeout=self._deadline,
            )
            with translate_errors(reading=True):
                body = response.read(BODY_LIMIT + 1)
            complete = len(body) <= BODY_LIMIT
            if response.status != 200 or not complete:
                log.warning("moderation: the endpoint answered %s", response.status)
                raise unavailable()
            return json.loads(body)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            log.warning("moderation: no verdict within %ss", self._deadline)
            raise unavailable() from None
        except ProviderError as exc:
            if exc.code == "moderation_unavailable":
                raise
            log.warning("moderation: the endpoint failed (%s)", exc.message)
            raise unavailable() from exc
        except (ValueError, RecursionError) as exc:
            log.warning("moderation: the endpoint sent malformed JSON")
            raise unavailable() from exc
        finally:
            timer.close()
            if response is not None:
                if complete:
                    response.release_conn()  # read to its end: reuse it
                else:
                    response.close()


def _flagged(verdict: Any) -> bool:
    """Read `results[*].flagged`; anything else is a failed check."""
    results = verdict.get("results") if isinstance(verdict, dict) else None
    if not isinstance(results, list) or not results:
        log.warning("moderation: the verdict has no results")
        raise unavailable()
    flags = [r.get("flagged") if isinstance(r, dict) else None for r in results]
    if not all(isinstance(flag, bool) for flag in flags):
        log.warning("moderation: a result has no flagged verdict")
        raise unavailable()
    return any(flags)
