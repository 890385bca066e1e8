"""Hybrid retrieval: lexical and vector rankings fused, on both engines."""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from chatapp.knowledge.embed import OpenAIEmbedder
from chatapp.knowledge.embed import VectorCache
from chatapp.knowledge.embed import fuse
from chatapp.knowledge.embed import hybrid_search
from chatapp.knowledge.embed import make_embedder
from chatapp.knowledge.engines import open_index
from chatapp.knowledge.index import Index
from chatapp.knowledge.index import Passage
from tests.fake_embeddings import FakeEmbeddings

ENGINES = ["sqlite", "postgres"]


@pytest.fixture
def fake() -> Iterator[FakeEmbeddings]:
    with FakeEmbeddings() as running:
        yield running


@pytest.fixture(params=ENGINES)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return "sqlite:///"
    server = request.getfixturevalue("postgres_server")
    server.drop_knowledge_index()
    return str(server.url)


def shop(index: Index) -> None:
    for url, title, text in (
        ("https://s.test/returns", "Returns", "Refunds are paid within five days."),
        ("https://s.test/shipping", "Shipping", "Parcels arrive in two working days."),
        ("https://s.test/tents", "Tents", "Our tents sleep two and weigh 1.9 kg."),
    ):
        index.replace(url, title, [Passage(url, title, "", text)])


def test_a_question_with_no_word_in_common_finds_its_page_through_vectors(
    url: str, tmp_path: Path, fake: FakeEmbeddings
) -> None:
    lexical = open_index(url, tmp_path)
    hybrid = open_index(url, tmp_path, OpenAIEmbedder(fake.base_url, "toy", "k"))
    shop(hybrid)
    question = "when do I get my money back"
    assert lexical.search(question) == []
    assert hybrid.search(question)[0].url == "https://s.test/returns"
    assert hybrid.search("money", prefer_url="https://s.test/tents")[0].url == (
        "https://s.test/returns"
    )
    lexical.close()
    hybrid.close()


def test_every_host_sees_new_vectors_after_a_write(
    url: str, tmp_path: Path, fake: FakeEmbeddings
) -> None:
    embedder = OpenAIEmbedder(fake.base_url, "toy")
    reader = open_index(url, tmp_path, embedder)
    writer = open_index(url, tmp_path, embedder)
    shop(writer)
    assert reader.search("camping gear")[0].url == "https://s.test/tents"
    writer.replace(
        "https://s.test/tents",
        "Tents",
        [Passage("https://s.test/tents", "Tents", "", "Sold out until May.")],
    )
    writer.remove("https://s.test/returns")
    hits = reader.search("money back camping")
    assert "https://s.test/returns" not in [h.url for h in hits]
    reader.close()
    writer.close()


def test_an_endpoint_that_fails_leaves_retrieval_lexical(
    url: str, tmp_path: Path, fake: FakeEmbeddings
) -> None:
    index = open_index(url, tmp_path, OpenAIEmbedder(fake.base_url, "toy"))
    fake.fail = True
    shop(index)  # indexed without vectors, not refused
    assert index.search("refunds")[0].url == "https://s.test/returns"
    assert index.search("money back") == []
    fake.fail = False
    assert index.search("refunds")[0].url == "https://s.test/returns"
    index.close()


def test_the_client_speaks_the_openai_wire_format(fake: FakeEmbeddings) -> None:
    embedder = make_embedder("toy-model", fake.base_url, "sk-test")
    assert embedder is not None
    texts = [f"text {i}" for i in range(70)]  # two batches
    vectors = embedder.embed(texts)
    assert vectors.shape == (70, 64)
    assert [len(r["input"]) for r in fake.requests] == [64, 6]
    assert fake.requests[0]["model"] == "toy-model"
    assert fake.headers[0]["Authorization"] == "Bearer sk-test"
    # Rows keep the order of the texts although the server listed them reversed.
    again = embedder.embed(["text 69"])
    assert vectors[69].tolist() == again[0].tolist()
    assert make_embedder("", fake.base_url) is None


def test_reciprocal_rank_fusion_rewards_agreement() -> None:
    a, b, c = (Passage(f"u{i}", "t", "", f"x{i}") for i in range(3))
    # b is second lexically but first by vector: found by both, it leads.
    fused = fuse([a, b, c], [b], limit=3)
    assert [p.url for p in fused] == ["u1", "u0", "u2"]
    assert len(fuse([a, b, c], [c, b], limit=2)) == 2


class FixedEmbedder:
    """Embeds every question as the first axis."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([[1.0, 0.0, 0.0, 0.0]] * len(texts), dtype=np.float32)


def near(cosine: float, axis: int) -> bytes:
    """A unit vector at `cosine` to the first axis, off towards `axis`."""
    vector = np.zeros(4, dtype=np.float32)
    vector[0], vector[axis] = cosine, (1 - cosine**2) ** 0.5
    return vector.tobytes()


def test_the_vector_ranking_weighs_page_evidence_like_the_lexical_one() -> None:
    # Page A answers with two passages, page B with one a little nearer.
    passages = {
        1: Passage("https://s.test/a", "A", "", "first"),
        2: Passage("https://s.test/a", "A", "", "second"),
        3: Passage("https://s.test/b", "B", "", "lone"),
    }
    vectors = [(1, near(0.80, 1)), (2, near(0.78, 2)), (3, near(0.85, 3))]

    def search(prefer_url: str | None = None) -> list[str]:
        found = hybrid_search(
            "question",
            [],
            FixedEmbedder(),
            VectorCache(),
            version=(3,),
            load=lambda: vectors,
            fetch=lambda ids: {i: passages[i] for i in ids},
            limit=3,
            prefer_url=prefer_url,
        )
        return [p.text for p in found]

    assert search() == ["first", "second", "lone"]
    assert search(prefer_url="https://s.test/b") == ["lone", "first", "second"]
