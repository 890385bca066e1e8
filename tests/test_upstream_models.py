"""The upstream edge in process: request forms, refusals, retries, settings."""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import Any

import pytest

from chatapp import sse
from chatapp.config import load_config
from chatapp.errors import ConfigError
from chatapp.errors import ProviderError
from chatapp.upstream import anthropic
from chatapp.upstream import openai_compat
from chatapp.upstream.base import Attempt
from chatapp.upstream.base import ChatRequest
from chatapp.upstream.base import Chunk
from chatapp.upstream.base import Message
from chatapp.upstream.http import MAX_RETRY_AFTER
from chatapp.upstream.http import UnsupportedParameter
from chatapp.upstream.http import bad_request
from chatapp.upstream.http import retry_after
from chatapp.upstream.http import status_error
from chatapp.upstream.openai_compat import stream_error
from chatapp.upstream.retry import Resilient
from chatapp.upstream.retry import Route
from tests.fake_provider import REFUSED_PARAMETER_FIXTURE
from tests.fake_provider import default_fixtures_dir


def request(model: str, **fields: Any) -> ChatRequest:
    return ChatRequest(
        model=model,
        system="Be brief.",
        messages=(Message("user", "Hi"),),
        max_output_tokens=4000,
        **fields,
    )


# -- request forms ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "reasoning"),
    [
        ("o1", True),
        ("o1-mini", True),
        ("o3", True),
        ("o4-mini", True),
        ("o9-pro", True),
        ("gpt-5", True),
        ("gpt-5-mini", True),
        ("gpt-5.4", True),
        ("gpt-5-nano-2025-08-07", True),
        ("gpt-4o-mini", False),
        ("gpt-50", False),
        ("o10", False),
        ("omni", False),
        ("openai/o4-mini", False),  # a router translates its own names
        ("llama3.1", False),
        ("deepseek-reasoner", False),
    ],
)
def test_reasoning_models_are_told_by_name(model: str, reasoning: bool) -> None:
    assert openai_compat.is_reasoning_model(model) is reasoning


def test_a_reasoning_model_gets_max_completion_tokens_and_no_temperature() -> None:
    body = openai_compat.request_body(
        request("gpt-5-mini", temperature=0.7, reasoning_effort="high")
    )
    assert body["max_completion_tokens"] == 4000
    assert body["reasoning_effort"] == "high"
    assert "max_tokens" not in body and "temperature" not in body


def test_other_openai_compatible_models_keep_max_tokens() -> None:
    body = openai_compat.request_body(
        request("llama3.1", temperature=0.7, reasoning_effort="high")
    )
    assert body["max_tokens"] == 4000 and body["temperature"] == 0.7
    assert "max_completion_tokens" not in body and "reasoning_effort" not in body


@pytest.mark.parametrize(
    ("param", "present", "absent"),
    [
        ("max_tokens", {"max_completion_tokens": 4000}, ("max_tokens", "temperature")),
        ("max_completion_tokens", {"max_tokens": 4000}, ("max_completion_tokens",)),
        ("temperature", {"max_tokens": 4000}, ("temperature",)),
    ],
)
def test_a_refused_parameter_is_swapped_for_the_other_form(
    param: str, present: dict[str, Any], absent: tuple[str, ...]
) -> None:
    model = "gpt-5" if param == "max_completion_tokens" else "llama3.1"
    body = openai_compat.request_body(request(model, temperature=0.5))
    other = openai_compat.adjusted(body, param)
    assert other is not None
    for key, value in present.items():
        assert other[key] == value
    for key in absent:
        assert key not in other


def test_a_parameter_not_sent_is_not_asked_again() -> None:
    body = openai_compat.request_body(request("llama3.1"))
    assert openai_compat.adjusted(body, "temperature") is None


@pytest.mark.parametrize(
    ("effort", "max_tokens", "budget"),
    [
        ("low", 4000, 1024),
        ("medium", 4000, 2000),
        ("high", 4000, 3200),
        ("high", 1100, 1024),
        ("low", 1025, 1024),
        ("low", 1024, None),
    ],
)
def test_anthropic_thinking_budget_grows_with_effort(
    effort: str, max_tokens: int, budget: int | None
) -> None:
    got = anthropic.thinking_budget(effort, max_tokens)
    assert got == budget
    if got is not None:
        assert 1024 <= got < max_tokens


def test_anthropic_extended_thinking_takes_no_temperature() -> None:
    body = anthropic.request_body(
        request("claude-sonnet-4-5", temperature=0.3, reasoning_effort="medium")
    )
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2000}
    assert "temperature" not in body
    plain = anthropic.request_body(request("claude-sonnet-4-5", temperature=0.3))
    assert plain["temperature"] == 0.3 and "thinking" not in plain


# -- the edge's reading of refusals ----------------------------------------------


@pytest.mark.parametrize("param", sorted(REFUSED_PARAMETER_FIXTURE))
def test_openai_recorded_400s_name_the_refused_parameter(param: str) -> None:
    path = default_fixtures_dir() / REFUSED_PARAMETER_FIXTURE[param]
    error = bad_request(json.loads(path.read_bytes()))
    assert isinstance(error, UnsupportedParameter) and error.param == param


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        {"error": "bad"},
        {"error": {"message": "Invalid request.", "param": None, "code": None}},
        {"error": {"param": "messages", "code": "unsupported_parameter"}},
        {"error": {"param": "max_tokens", "code": "context_length_exceeded"}},
    ],
)
def test_other_400s_stay_plain_refusals(body: Any) -> None:
    error = bad_request(body)
    assert not isinstance(error, UnsupportedParameter)
    assert error.code == "provider_error" and error.reason is None


@pytest.mark.parametrize(
    ("status", "reason"),
    [(429, "429"), (500, "5xx"), (502, "5xx"), (503, "5xx"), (529, "529")],
)
def test_statuses_worth_asking_again_say_why(status: int, reason: str) -> None:
    assert status_error(status, 2.0).reason == reason
    assert status_error(status, 2.0).retry_after == 2.0


@pytest.mark.parametrize("status", [301, 307, 400, 401, 403, 404, 413, 422])
def test_statuses_not_worth_asking_again(status: int) -> None:
    assert status_error(status).reason is None


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("3", 3.0),
        ("0.5", 0.5),
        ("120", MAX_RETRY_AFTER),
        ("-4", 0.0),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("soon", None),
    ],
)
def test_retry_after_is_read_and_capped(header: str | None, seconds: float) -> None:
    assert retry_after(header) == seconds


# -- retries and fallback --------------------------------------------------------


class Script:
    """A provider whose attempts fail or answer as scripted."""

    def __init__(self, name: str, *plan: Any) -> None:
        self.name = name
        self.plan = list(plan)
        self.asked: list[str] = []
        self.closed = 0

    def stream(self, request: ChatRequest) -> Generator[Chunk]:
        self.asked.append(request.model)
        step = self.plan.pop(0)
        try:
            for item in step:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self.closed += 1


def unavailable(reason: str | None = "5xx", after: float | None = None) -> Any:
    return ProviderError(
        "provider_unavailable", "down", retryable=True, reason=reason, retry_after=after
    )


def run(provider: Resilient, req: ChatRequest) -> list[Any]:
    return list(provider.stream(req))


def texts(chunks: list[Any]) -> list[str]:
    return [c.text for c in chunks if isinstance(c, Chunk) and c.text]


def test_failures_before_the_first_word_are_retried_then_answered() -> None:
    main = Script("openai", [unavailable(after=3.0)], [unavailable()], [Chunk("Hi")])
    waits: list[float] = []
    resilient = Resilient(Route(main, "m"), retries=2, sleep=waits.append)
    chunks = run(resilient, request("m"))
    attempts = [c for c in chunks if isinstance(c, Attempt)]
    assert [(a.number, a.model, a.reason) for a in attempts] == [
        (2, "m", "5xx"),
        (3, "m", "5xx"),
    ]
    assert texts(chunks) == ["Hi"]
    assert waits[0] == 3.0 and 0.125 <= waits[1] <= 0.5
    assert main.closed == 3


def test_after_the_retries_the_fallback_model_is_asked() -> None:
    main = Script("openai", [unavailable("connect")], [unavailable("connect")])
    spare = Script("anthropic", [Chunk("Hello")])
    seen: list[tuple[int, str, str, bool]] = []
    resilient = Resilient(
        Route(main, "big"), Route(spare, "small"), retries=1, sleep=lambda s: None
    )
    resilient.on_attempt.append(
        lambda a, provider, model: seen.append((a.number, provider, model, a.fallback))
    )
    chunks = run(resilient, request("big"))
    assert texts(chunks) == ["Hello"]
    assert spare.asked == ["small"]
    assert seen == [(2, "openai", "big", False), (3, "openai", "big", True)]


def test_a_turn_on_the_fallback_route_asks_only_the_fallback() -> None:
    main = Script("openai")
    spare = Script("openai", [unavailable()], [Chunk("cheap")])
    resilient = Resilient(
        Route(main, "big"), Route(spare, "small"), retries=1, sleep=lambda s: None
    )
    chunks = run(resilient, request("small", route="fallback"))
    assert texts(chunks) == ["cheap"]
    assert main.asked == [] and spare.asked == ["small", "small"]


@pytest.mark.parametrize(
    "first",
    [
        [Chunk("Hel"), unavailable()],  # text went out
        [Chunk(reasoning="hmm"), unavailable()],  # reasoning went out
        [unavailable(reason=None)],  # nothing to gain by asking again
    ],
)
def test_no_retry_once_something_was_relayed_or_for_a_lasting_failure(
    first: list[Any],
) -> None:
    main = Script("openai", first, [Chunk("again")])
    resilient = Resilient(Route(main, "m"), retries=2, sleep=lambda s: None)
    with pytest.raises(ProviderError):
        run(resilient, request("m"))
    assert len(main.asked) == 1


def test_zero_retries_and_no_fallback_fail_at_once() -> None:
    main = Script("openai", [unavailable()])
    with pytest.raises(ProviderError):
        run(Resilient(Route(main, "m"), retries=0, sleep=lambda s: None), request("m"))


# -- settings --------------------------------------------------------------------


BASE = {"CHATAPP_PROVIDER": "openai", "OPENAI_API_KEY": "sk-test"}


def test_the_new_settings_have_spec_defaults() -> None:
    config = load_config(BASE)
    assert config.upstream_total_timeout == 600
    assert config.upstream_first_token_timeout == 300
    assert config.upstream_retries == 2
    assert config.fallback_model == "" and config.reasoning_effort == ""
    assert config.show_reasoning is False


def test_a_fallback_elsewhere_needs_its_key() -> None:
    env = {**BASE, "CHATAPP_FALLBACK_MODEL": "claude-haiku-4-5"}
    env["CHATAPP_FALLBACK_PROVIDER"] = "anthropic"
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        load_config(env)
    config = load_config({**env, "ANTHROPIC_API_KEY": "ak"})
    assert config.fallback_base_url == "https://api.anthropic.com"
    assert config.fallback_api_key == "ak"


def test_a_fallback_at_the_same_provider_shares_its_url_and_key() -> None:
    env = {**BASE, "CHATAPP_PROVIDER_BASE_URL": "http://127.0.0.1:9/v1"}
    config = load_config({**env, "CHATAPP_FALLBACK_MODEL": "gpt-5-nano"})
    assert config.fallback_provider == "openai"
    assert config.fallback_base_url == "http://127.0.0.1:9/v1"
    assert config.fallback_api_key == "sk-test"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CHATAPP_FALLBACK_PROVIDER": "anthropic"}, "CHATAPP_FALLBACK_MODEL"),
        (
            {"CHATAPP_FALLBACK_MODEL": "x", "CHATAPP_FALLBACK_BASE_URL": "ftp://x"},
            "http",
        ),
        ({"CHATAPP_UPSTREAM_RETRIES": "-1"}, "CHATAPP_UPSTREAM_RETRIES"),
        ({"CHATAPP_REASONING_EFFORT": "max"}, "CHATAPP_REASONING_EFFORT"),
        ({"CHATAPP_SHOW_REASONING": "maybe"}, "CHATAPP_SHOW_REASONING"),
        ({"CHATAPP_UPSTREAM_FIRST_TOKEN_TIMEOUT": "0"}, "FIRST_TOKEN"),
    ],
)
def test_bad_model_settings_stop_start_up(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config({**BASE, **env})


def test_anthropic_thinking_needs_room_above_its_minimum_budget() -> None:
    env = {
        "CHATAPP_PROVIDER": "anthropic",
        "ANTHROPIC_API_KEY": "ak",
        "CHATAPP_REASONING_EFFORT": "low",
    }
    with pytest.raises(ConfigError, match="CHATAPP_MAX_OUTPUT_TOKENS"):
        load_config(env)
    assert load_config({**env, "CHATAPP_MAX_OUTPUT_TOKENS": "2048"})


def test_the_first_token_wait_never_outlasts_the_whole_turn() -> None:
    config = load_config({**BASE, "CHATAPP_UPSTREAM_TOTAL_TIMEOUT": "40"})
    assert config.upstream_first_token_timeout == 40


# -- starting a turn on the fallback (what the spend governor asks for) ----------


def test_a_turn_can_start_on_the_fallback_model() -> None:
    from chatapp.store.conversations import MemoryHistory
    from chatapp.store.coordination import MemoryCoordination
    from chatapp.store.events import MemoryEventLog
    from chatapp.tokens import Identity
    from chatapp.turns.relay import Relay
    from chatapp.turns.start import TurnIds
    from chatapp.turns.start import start_turn

    main = Script("openai")
    spare = Script("anthropic", [Chunk("cheap"), Chunk(finish_reason="stop")])
    upstream = Resilient(Route(main, "big"), Route(spare, "small"), retries=0)
    config = load_config(
        {
            **BASE,
            "CHATAPP_MODEL": "big",
            "CHATAPP_FALLBACK_MODEL": "small",
            "CHATAPP_FALLBACK_PROVIDER": "anthropic",
            "ANTHROPIC_API_KEY": "ak",
        }
    )
    log = MemoryEventLog()
    relay = Relay(log, MemoryCoordination(log), MemoryHistory(60), upstream, config)
    ids = TurnIds.mint(None)
    earlier = start_turn(
        relay, config, Identity("visitor-1"), "Hello", ids, fallback=True
    )
    assert earlier is None
    run = relay.runs[ids.turn_id]
    assert run.greenlet is not None
    run.greenlet.join(5)
    tail = relay.open(ids.turn_id)
    assert tail is not None and tail.done
    _, event, data = sse.parse(tail.frames[0])
    assert event == "start"
    assert (json.loads(data)["provider"], json.loads(data)["model"]) == (
        "anthropic",
        "small",
    )
    assert b"cheap" in b"".join(tail.frames)
    assert main.asked == [] and spare.asked == ["small"]


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        ({"type": "server_error", "code": None}, "provider_unavailable", "5xx"),
        (
            {"type": "requests", "code": "rate_limit_exceeded"},
            "provider_rate_limited",
            "429",
        ),
        ({"type": "overloaded"}, "provider_unavailable", "overloaded"),
        ({"type": "invalid_request_error", "code": "bad"}, "provider_error", None),
        ("not an object", "provider_error", None),
    ],
)
def test_openai_in_stream_errors_say_whether_asking_again_helps(
    error: Any, code: str, reason: str | None
) -> None:
    failure = stream_error(error)
    assert (failure.code, failure.reason) == (code, reason)
    assert failure.retryable is (reason is not None)
