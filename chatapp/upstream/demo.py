"""The built-in demo provider: a canned Markdown answer, streamed, no network."""

from __future__ import annotations

import re
import time
from collections.abc import Generator

from chatapp.upstream.base import ChatRequest
from chatapp.upstream.base import Chunk

ANSWER = """Hello! I am the **chatapp demo provider**, so this answer is canned \
and costs nothing. You asked:

> {question}

To talk to a real model, set a few variables and restart:

1. `CHATAPP_PROVIDER=openai` (or `anthropic`)
2. `OPENAI_API_KEY=…` (the key stays on the server)
3. optionally `CHATAPP_MODEL` and `CHATAPP_PROVIDER_BASE_URL` for Ollama, vLLM \
or OpenRouter

```bash
CHATAPP_PROVIDER=openai OPENAI_API_KEY=sk-... gunicorn -c gunicorn.conf.py wsgi:app
```

Everything you see streamed token by token, exactly as a real answer would."""

# Words with their trailing space, so pieces join back to the exact text.
_PIECES = re.compile(r"\S+\s*|\s+")


class DemoProvider:
    """Stream a deterministic Markdown answer at a realistic pace."""

    name = "demo"

    def __init__(self, *, delay: float = 0.03) -> None:
        self._delay = delay

    def stream(self, request: ChatRequest) -> Generator[Chunk]:
        """Yield the canned answer a word at a time."""
        question = request.messages[-1].content if request.messages else ""
        quoted = " ".join(question.split())[:200] or "(nothing)"
        text = ANSWER.format(question=quoted)
        pieces = _PIECES.findall(text)
        for piece in pieces:
            if self._delay:
                time.sleep(self._delay)
            yield Chunk(text=piece)
        yield Chunk(
            input_tokens=sum(len(m.content) for m in request.messages) // 4 + 1,
            output_tokens=len(pieces),
            finish_reason="stop",
        )
