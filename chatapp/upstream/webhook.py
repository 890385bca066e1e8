"""The owner's alert webhook: JSON posted to CHATAPP_ALERT_WEBHOOK.

Slack and Mattermost incoming webhooks read `text`; anything else reads the
structured fields beside it. Each post is bounded in time, never follows a
redirect (a 3xx is a failure), and is tried a few times with a growing
pause. Posts run in a greenlet of their own, never on a request's path.
"""

from __future__ import annotations

import logging
from typing import Any

import gevent
import requests

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 5.0
ATTEMPTS = 3
FIRST_PAUSE = 1.0


class Webhook:
    """Post alerts to one URL."""

    def __init__(
        self, url: str, session: requests.Session, pause: float = FIRST_PAUSE
    ) -> None:
        self.url = url
        self._session = session
        self._pause = pause

    def post(self, payload: dict[str, Any]) -> bool:
        """Post `payload`, a few times if need be; say whether it was taken."""
        pause = self._pause
        for attempt in range(1, ATTEMPTS + 1):
            try:
                response = self._session.post(
                    self.url,
                    json=payload,
                    timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
                    allow_redirects=False,
                )
                response.close()
            except requests.RequestException as exc:
                problem = type(exc).__name__
            else:
                if 200 <= response.status_code < 300:
                    return True
                problem = f"HTTP {response.status_code}"
            log.warning(
                "spend: the alert webhook failed (%s), attempt %d of %d",
                problem,
                attempt,
                ATTEMPTS,
            )
            if attempt < ATTEMPTS:
                gevent.sleep(pause)
                pause *= 2
        return False

    def send(self, payload: dict[str, Any]) -> None:
        """Post `payload` in the background."""
        gevent.spawn(self.post, payload)
