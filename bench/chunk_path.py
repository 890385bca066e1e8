"""Micro-benchmark: what the producer pays per provider chunk, in process.

Runs whole turns through the real code from the parsed event stream to the
turn log (OpenAI chunk parsing, the retry wrapper when the tree has one, the
producer, the in-memory turn log), with the network replaced by events
decoded once in advance. Point --root at another checkout (e.g. one made
with `git archive <commit> chatapp | tar -x -C /tmp/before`) to compare:

    python bench/chunk_path.py --root /tmp/before
    python bench/chunk_path.py --root .

It prints the process CPU microseconds per chunk over repeats: median,
best and quartiles.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from typing import Any

CHUNK = (
    'data: {"id":"chatcmpl-A","object":"chat.completion.chunk","created":1,'
    '"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_x","choices":[{"index":0,'
    '"delta":{"content":" token"},"logprobs":null,"finish_reason":null}]}\n\n'
)
END = (
    'data: {"id":"chatcmpl-A","object":"chat.completion.chunk","created":1,'
    '"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{},'
    '"logprobs":null,"finish_reason":"stop"}]}\n\n'
    'data: {"id":"chatcmpl-A","object":"chat.completion.chunk","created":1,'
    '"model":"gpt-4o-2024-08-06","choices":[],"usage":{"prompt_tokens":9,'
    '"completion_tokens":2000,"total_tokens":2009}}\n\ndata: [DONE]\n\n'
)


def _settings(m: dict[str, Any]) -> Any:
    """The relay's settings, in the vocabulary of the tree under --root."""
    values = {"stream_ttl": 60.0, "heartbeat": 15.0, "orphan": 30.0}
    timeouts = {"total_timeout": 600.0, "idle_timeout": 30.0}
    if hasattr(m["turns.model"], "TurnSettings"):  # trees before chatapp/settings
        return m["turns.model"].TurnSettings(
            provider="openai", model="m", **values, **timeouts
        )
    config = importlib.import_module("chatapp.config")
    return config.load_config(
        environ={"CHATAPP_PROVIDER": "openai", "OPENAI_API_KEY": "k"},
        overrides={
            "MODEL": "m",
            "STREAM_TTL": 60.0,
            "HEARTBEAT_SECONDS": 15.0,
            "ORPHAN_SECONDS": 30.0,
            "UPSTREAM_TOTAL_TIMEOUT": 600.0,
            "UPSTREAM_IDLE_TIMEOUT": 30.0,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument(
        "--no-wrapper", action="store_true", help="leave out the retry wrapper"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(args.root.resolve()))
    import gevent
    import requests

    m = {
        name: importlib.import_module(f"chatapp.{name}")
        for name in (
            "store.events",
            "store.conversations",
            "turns.model",
            "turns.relay",
            "upstream.base",
            "upstream.openai_compat",
            "upstream.sse_decoder",
        )
    }
    # Trees before the turn log and coordination were split have no second.
    if importlib.util.find_spec("chatapp.store.coordination") is not None:
        m["store.coordination"] = importlib.import_module("chatapp.store.coordination")
    decoder = m["upstream.sse_decoder"].SSEDecoder()
    batches = [decoder.feed(CHUNK.encode()) for _ in range(args.chunks)]
    batches.append(decoder.feed(END.encode()))

    class Replayed(m["upstream.openai_compat"].OpenAIProvider):  # type: ignore[misc]
        """The OpenAI provider with one network read per recorded chunk."""

        def events(self, body: dict[str, Any]) -> Any:
            yield from batches

    provider: Any = Replayed(
        session=requests.Session(),
        base_url="http://127.0.0.1:9/v1",
        api_key="k",
        connect_timeout=1,
    )
    try:
        if args.no_wrapper:
            raise ImportError("left out")
        retry = importlib.import_module("chatapp.upstream.retry")
        provider = retry.Resilient(retry.Route(provider, "m"), retries=2)
        wrapped = "with the retry wrapper"
    except ImportError:
        wrapped = "no retry wrapper"
    settings = _settings(m)
    request = m["upstream.base"].ChatRequest(
        model="m",
        system="",
        messages=(m["upstream.base"].Message("user", "hi"),),
        max_output_tokens=100_000,
    )
    per_chunk = []
    for n in range(args.repeats + 3):
        log = m["store.events"].MemoryEventLog()
        logs = [log]
        if "store.coordination" in m:
            logs.append(m["store.coordination"].MemoryCoordination(log))
        relay = m["turns.relay"].Relay(
            *logs,
            m["store.conversations"].MemoryHistory(60),
            provider,
            settings,
        )
        info = m["turns.model"].TurnInfo(f"turn-{n:06d}", "v:o", f"conv-{n:06d}", 0)
        relay.history.create(
            info.conversation_id,
            info.owner,
            m["store.conversations"].StoredMessage("user", "hi", 0),
        )
        gc.collect()
        # CPU time of this process: other processes on a shared machine
        # cost wall time, not this.
        began = time.process_time()
        relay.start(info, request)
        relay.runs[info.id].greenlet.join()
        took = time.process_time() - began
        if n >= 3:  # warm-up
            per_chunk.append(took / args.chunks * 1e6)
        gevent.sleep(0)
    quartiles = statistics.quantiles(per_chunk, n=4)
    print(
        f"{args.root}: median {statistics.median(per_chunk):.2f} us CPU per chunk, "
        f"best {min(per_chunk):.2f} (quartiles {quartiles[0]:.2f}..{quartiles[2]:.2f};"
        f" {args.chunks} chunks x {args.repeats} turns; {wrapped})"
    )


if __name__ == "__main__":
    main()
