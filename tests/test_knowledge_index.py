"""One contract for both index engines: SQLite FTS5 and Postgres."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest

from chatapp.knowledge.engines import open_index
from chatapp.knowledge.index import OPENING_WORDS
from chatapp.knowledge.index import Index
from chatapp.knowledge.index import IndexUnavailable
from chatapp.knowledge.index import Passage
from chatapp.knowledge.index import narrow
from chatapp.knowledge.index import page_lead
from chatapp.knowledge.pg_index import PgIndex
from chatapp.knowledge.sqlite_index import SCHEMA
from chatapp.knowledge.sqlite_index import SqliteIndex
from chatapp.knowledge.sqlite_pages import SCHEMA_VERSION
from tests.conftest import free_port

ENGINES = ["sqlite", "postgres"]


@pytest.fixture(params=ENGINES)
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Index]:
    if request.param == "sqlite":
        opened = open_index("sqlite:///", tmp_path)
    else:
        server = request.getfixturevalue("postgres_server")
        server.drop_knowledge_index()
        opened = open_index(server.url, tmp_path)
        assert isinstance(opened, PgIndex)
    yield opened
    opened.close()


def doc(url: str, title: str, *sections: tuple[str, str]) -> list[Passage]:
    return [Passage(url=url, title=title, headings=h, text=t) for h, t in sections]


def add(index: Index, url: str, title: str, *sections: tuple[str, str]) -> int:
    return index.replace(url, title, doc(url, title, *sections))


def urls(passages: list[Passage]) -> list[str]:
    return [p.url for p in passages]


class TestIndexContract:
    def test_a_stored_document_is_found_with_its_title_and_headings(
        self, index: Index
    ) -> None:
        count = add(
            index,
            "https://shop.test/returns",
            "Returns policy",
            ("Refunds", "Refunds are paid within five working days."),
            ("Exchanges", "Swap a jacket for another size."),
        )
        assert count == 2
        [hit] = index.search("when is my refund paid", limit=1)
        assert hit.url == "https://shop.test/returns"
        assert hit.title == "Returns policy"
        assert hit.headings == "Refunds"
        assert "five working days" in hit.text
        assert hit.score > 0

    def test_replace_swaps_the_whole_document(self, index: Index) -> None:
        add(index, "https://s.test/a", "Old", ("", "zebra crossing rules"))
        add(index, "https://s.test/a", "New", ("", "giraffe feeding times"))
        assert index.search("zebra") == []
        assert urls(index.search("giraffe")) == ["https://s.test/a"]
        info = index.document("https://s.test/a")
        assert info is not None and info.title == "New" and info.passages == 1

    def test_remove_drops_the_document_and_says_whether_it_was_there(
        self, index: Index
    ) -> None:
        add(index, "https://s.test/a", "A", ("", "zebra"))
        assert index.remove("https://s.test/a") is True
        assert index.remove("https://s.test/a") is False
        assert index.search("zebra") == []
        assert index.document("https://s.test/a") is None

    def test_documents_list_what_the_crawler_stored(self, index: Index) -> None:
        index.replace(
            "https://s.test/b",
            "B",
            doc("https://s.test/b", "B", ("", "one"), ("", "two")),
            modified=1700000000.5,
            etag='"abc"',
            last_modified="Tue, 14 Nov 2023 22:13:20 GMT",
        )
        add(index, "https://s.test/a", "A", ("", "zebra"))
        listed = index.documents()
        assert [d.url for d in listed] == ["https://s.test/a", "https://s.test/b"]
        b = listed[1]
        assert (b.title, b.passages, b.modified) == ("B", 2, 1700000000.5)
        assert (b.etag, b.last_modified) == ('"abc"', "Tue, 14 Nov 2023 22:13:20 GMT")
        stats = index.stats()
        assert (stats.documents, stats.passages) == (2, 3)
        assert stats.bytes > 0

    def test_a_title_match_outranks_the_same_words_in_a_body(
        self, index: Index
    ) -> None:
        add(
            index,
            "https://s.test/blog",
            "Our week",
            ("", "We talked about the warranty and many other things all week."),
        )
        add(
            index,
            "https://s.test/warranty",
            "Warranty",
            ("", "Every product is covered for two years from purchase."),
        )
        assert urls(index.search("warranty"))[0] == "https://s.test/warranty"

    def test_a_heading_match_outranks_the_same_words_in_a_body(
        self, index: Index
    ) -> None:
        add(
            index,
            "https://s.test/a",
            "Help",
            ("Contact", "Write to us about delivery times or anything else."),
        )
        add(
            index,
            "https://s.test/b",
            "Help",
            ("Delivery times", "Orders leave the warehouse the next working day."),
        )
        assert urls(index.search("delivery times"))[0] == "https://s.test/b"

    def test_the_visitors_page_is_favoured_between_similar_pages(
        self, index: Index
    ) -> None:
        for name in ("alpine", "summit"):
            add(
                index,
                f"https://s.test/{name}",
                f"{name.title()} tent",
                ("", "A two-person tent that weighs 1.9 kg and packs small."),
            )
        for name in ("alpine", "summit"):
            page = f"https://s.test/{name}"
            assert (
                urls(index.search("how much does it weigh", prefer_url=page))[0] == page
            )

    def test_limit_caps_the_results(self, index: Index) -> None:
        for i in range(5):
            add(index, f"https://s.test/{i}", f"Page {i}", ("", "common words"))
        assert len(index.search("common", limit=3)) == 3
        assert index.search("common", limit=0) == []

    @pytest.mark.parametrize(
        "query",
        [
            '"',
            '""" unbalanced "quote',
            "*",
            "tent*",
            "NEAR(tent weight, 2)",
            "tent NOT weight AND OR",
            "-tent -",
            "title:tent",
            "^tent",
            "(tent",
            "{tent}",
            "tent\x00weight",
            "'; DROP TABLE passages; --",
            "",
            "   ",
            "the and of",
            "x" * 10_000,
            "émoji 🏕️ テント",
        ],
    )
    def test_any_question_text_is_safe_to_search(
        self, index: Index, query: str
    ) -> None:
        add(index, "https://s.test/t", "Tent", ("", "tent weight 1.9 kg"))
        results = index.search(query)
        assert isinstance(results, list)
        assert index.document("https://s.test/t") is not None


def test_the_sqlite_file_lives_in_the_instance_folder_by_default(
    tmp_path: Path,
) -> None:
    index = open_index("sqlite:///", tmp_path)
    assert isinstance(index, SqliteIndex)
    index.replace("u", "t", doc("u", "t", ("", "words")))
    index.close()
    assert (tmp_path / "knowledge.sqlite3").exists()
    other = open_index(f"sqlite:///{tmp_path / 'elsewhere.db'}", "/nonexistent")
    assert isinstance(other, SqliteIndex) and other.path == tmp_path / "elsewhere.db"


def test_an_unknown_index_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        open_index("mysql://x", tmp_path)


def test_a_reader_sees_a_writers_commit_from_another_connection(
    tmp_path: Path,
) -> None:
    writer = SqliteIndex(tmp_path / "k.db")
    reader = SqliteIndex(tmp_path / "k.db")
    add(writer, "u", "t", ("", "zebra"))
    assert urls(reader.search("zebra")) == ["u"]
    add(writer, "u", "t", ("", "giraffe"))
    assert urls(reader.search("giraffe")) == ["u"]
    writer.close()
    reader.close()


def test_two_hosts_share_one_postgres_index(postgres_server: Any) -> None:
    postgres_server.drop_knowledge_index()
    first, second = PgIndex(postgres_server.url), PgIndex(postgres_server.url)
    try:
        add(first, "https://s.test/hours", "Opening hours", ("", "Open 9 to 5."))
        assert urls(second.search("opening hours")) == ["https://s.test/hours"]
        assert second.remove("https://s.test/hours") is True
        assert first.search("opening hours") == []
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_an_unreachable_index_raises_index_unavailable(
    engine: str, tmp_path: Path
) -> None:
    if engine == "sqlite":
        broken: Index = SqliteIndex(tmp_path)  # a directory, not a database file
    else:
        broken = PgIndex(f"postgresql://postgres@127.0.0.1:{free_port()}/none")
    with pytest.raises(IndexUnavailable):
        broken.search("anything")
    broken.close()


def test_words_in_most_passages_cost_nothing_and_still_match_alone(
    index: Index,
) -> None:
    # Both engines leave such words out (index.telling); Postgres ranks only
    # the passages holding the rarer words (index.narrow).
    filler = [
        Passage("https://s.test/log", "Log", "", f"common entry number{i}")
        for i in range(1200)
    ]
    index.replace("https://s.test/log", "Log", filler)
    add(index, "https://s.test/rare", "Rare", ("", "common words and a zebra"))
    assert urls(index.search("common zebra", limit=1)) == ["https://s.test/rare"]
    assert len(index.search("common", limit=5)) == 5  # only a common word: kept
    assert index.search("absent missing", limit=5) == []
    # A write is seen at once: the counts behind the choice start over.
    add(index, "https://s.test/more", "More", ("", "zebra zebra"))
    assert "https://s.test/more" in urls(index.search("zebra"))
    assert urls(index.search("common zebra", limit=1)) == ["https://s.test/more"]


def test_postgres_ranks_only_the_passages_of_the_rarer_words() -> None:
    counts = {"git": 5000, "rebase": 300, "onto": 40, "interactive": 800}
    assert narrow(list(counts), counts, 10_000) == ["onto", "rebase"]
    assert narrow(["git"], counts, 10_000) == ["git"]  # the rarest always
    assert narrow(list(counts), counts, 900) == list(counts)  # small: all


def test_a_pages_lead_outranks_long_pages_that_use_its_words_in_passing(
    index: Index,
) -> None:
    # The lead (a man page's NAME line) starts every heading path of its
    # page, whose text never says the question's words; a manual says them
    # in passage after passage, each about something else.
    lead = "move - Move or rename a file"
    options = "with options for verbose output, dry runs and forcing, " * 3
    add(
        index,
        "https://s.test/move",
        "move(1)",
        (f"{lead} > SYNOPSIS", f"move [options] source destination {options}"),
        (f"{lead} > OPTIONS", f"--force overwrites the destination {options}"),
    )
    add(
        index,
        "https://s.test/manual",
        "User manual",
        *[
            (
                f"Chapter {n}",
                "To rename a branch, or a remote, give the file its new name: "
                f"rename, then check the file ({n}).",
            )
            for n in range(12)
        ],
    )
    for n in range(30):  # other pages, so that the words are rare ones
        add(index, f"https://s.test/{n}", f"Shop {n}", ("", f"Opening hours {n}."))
    assert urls(index.search("how do I rename a file"))[0] == "https://s.test/move"


def test_a_pages_lead_is_the_head_every_heading_path_shares() -> None:
    def lead(*paths: str) -> str:
        return page_lead([Passage("u", "t", path, "text") for path in paths])

    assert lead("mv - rename files > NAME", "mv - rename files > OPTIONS") == (
        "mv - rename files"
    )
    assert lead("Refunds", "Exchanges") == ""  # sections, no lead
    assert lead("Refunds", "Refunds") == ""  # one section, no deeper path
    assert lead() == ""


def test_a_page_that_opens_before_its_first_heading_is_about_its_opening_words() -> (
    None
):
    opening = " ".join(f"w{n}" for n in range(OPENING_WORDS + 10))
    passages = [
        Passage("u", "Readline", "", f"The readline module reads lines.\n{opening}"),
        Passage("u", "Readline", "Class: Interface", "An interface."),
    ]
    lead = page_lead(passages)
    assert lead.startswith("The readline module reads lines. w0")
    assert len(lead.split()) == OPENING_WORDS
    # A page whose text starts under a heading has no opening words.
    assert page_lead(passages[1:]) == ""
    # A menu the extractor kept above the text is not what the page says.
    menu = Passage("u", "Debugger", "", "- Node.js v20\n- Table of contents\n- Index")
    assert page_lead([menu, *passages]).startswith("The readline module")


def test_a_page_found_only_by_its_opening_words_ranks_first(index: Index) -> None:
    add(
        index,
        "https://docs.test/readline",
        "Readline",
        ("", "The readline module reads a stream one line at a time."),
        ("Class: Interface", "Instances are made by createInterface()."),
        ("Events", "The close event is emitted when the input ends."),
    )
    for n in range(3):
        add(
            index,
            f"https://docs.test/fs{n}",
            f"File system {n}",
            ("", "The file system module."),
            ("Streams", "Read a stream of a file: one stream per file."),
            ("Lines", "A line of a file ends at a newline; read line by line."),
        )
    assert urls(index.search("read a stream one line at a time"))[0] == (
        "https://docs.test/readline"
    )


def test_an_sqlite_file_from_before_page_leads_is_migrated_on_open(
    tmp_path: Path,
) -> None:
    # A file written by the previous release: no pages_fts, user_version 0.
    path = tmp_path / "old.sqlite3"
    with closing(sqlite3.connect(path)) as db:
        db.executescript(SCHEMA.split("-- Each page's title")[0])
        db.execute(
            "INSERT INTO documents VALUES ('u', 'mover', 2, NULL, '', '', '', 0)"
        )
        db.executemany(
            "INSERT INTO passages (url, seq, title, headings, body) "
            "VALUES ('u', ?, 'mover', ?, 'text')",
            [(0, "mover - rename files > NAME"), (1, "mover - rename files > BUGS")],
        )
        db.commit()
    index = SqliteIndex(path)
    try:
        index.stats()  # opens, and migrates
        with closing(sqlite3.connect(path)) as db:
            assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
            assert db.execute("SELECT title, lead FROM pages_fts").fetchall() == [
                ("mover", "mover - rename files")
            ]
        assert urls(index.search("rename")) == ["u"]
        add(index, "u", "mover", ("mover - rename files > NAME", "rename text"))
        with closing(sqlite3.connect(path)) as db:
            assert db.execute("SELECT count(*) FROM pages_fts").fetchone() == (1,)
        index.remove("u")
        with closing(sqlite3.connect(path)) as db:
            assert db.execute("SELECT count(*) FROM pages_fts").fetchone() == (0,)
    finally:
        index.close()


def test_a_postgres_table_from_before_page_leads_gets_them_on_connect(
    postgres_server: Any,
) -> None:
    postgres_server.drop_knowledge_index()
    first = PgIndex(postgres_server.url)
    try:
        add(
            first,
            "u",
            "mover",
            ("mover - rename files > NAME", "rename text"),
            ("mover - rename files > BUGS", "none known"),
        )
    finally:
        first.close()
    # Back to an older release's table: no lead, no page tsvector, no meta.
    postgres_server.execute(
        "ALTER TABLE knowledge_documents DROP COLUMN tsv, DROP COLUMN lead"
    )
    postgres_server.execute("DROP TABLE knowledge_meta")
    second = PgIndex(postgres_server.url)
    try:
        assert set(urls(second.search("rename"))) == {"u"}
        with second._db() as db:
            assert db.execute("SELECT lead FROM knowledge_documents").fetchall() == [
                ("mover - rename files",)
            ]
    finally:
        second.close()


def test_leads_written_before_opening_words_counted_are_filled_on_connect(
    postgres_server: Any, tmp_path: Path
) -> None:
    postgres_server.drop_knowledge_index()
    opening = ("", "The readline module reads a stream one line at a time.")
    first = PgIndex(postgres_server.url)
    try:
        add(first, "u", "Readline", opening, ("Events", "close"))
    finally:
        first.close()
    # The last release's table: leads only from heading paths, no meta.
    postgres_server.execute("UPDATE knowledge_documents SET lead = ''")
    postgres_server.execute("DROP TABLE knowledge_meta")
    second = PgIndex(postgres_server.url)
    try:
        second.stats()
        with second._db() as db:
            assert db.execute("SELECT lead FROM knowledge_documents").fetchall() == [
                ("The readline module reads a stream one line at a time.",)
            ]
    finally:
        second.close()
    # SQLite's file of the last release (user_version 1) is filled the same.
    path = tmp_path / "v1.sqlite3"
    sqlite = SqliteIndex(path)
    try:
        add(sqlite, "u", "Readline", opening, ("Events", "close"))
    finally:
        sqlite.close()
    with closing(sqlite3.connect(path)) as db:
        db.execute("UPDATE pages_fts SET lead = ''")
        db.execute("PRAGMA user_version = 1")
        db.commit()
    sqlite = SqliteIndex(path)
    try:
        sqlite.stats()
        with closing(sqlite3.connect(path)) as db:
            assert db.execute("SELECT lead FROM pages_fts").fetchall() == [
                ("The readline module reads a stream one line at a time.",)
            ]
    finally:
        sqlite.close()


def test_connecting_to_an_up_to_date_table_waits_for_no_reader(
    postgres_server: Any,
) -> None:
    # A search in flight on another host holds ACCESS SHARE on the table;
    # a worker connecting meanwhile must not queue behind it (ALTER TABLE
    # would, until the statement timeout).
    postgres_server.drop_knowledge_index()
    first = PgIndex(postgres_server.url)
    second = PgIndex(postgres_server.url)
    try:
        add(first, "u", "Opening hours", ("", "Open 9 to 5."))
        with psycopg.connect(postgres_server.url) as reader, reader.transaction():
            reader.execute("LOCK TABLE knowledge_documents IN ACCESS SHARE MODE")
            assert urls(second.search("opening hours")) == ["u"]
    finally:
        first.close()
        second.close()
