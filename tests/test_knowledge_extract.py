"""Pages to passages: main content only, split by heading, bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatapp.knowledge.extract import MAX_PASSAGES
from chatapp.knowledge.extract import MAX_WORDS
from chatapp.knowledge.extract import UnsupportedContent
from chatapp.knowledge.extract import extract

SITE = Path(__file__).parent / "fixtures" / "site"
CHROME = (
    "NAVIGATIONMENU",
    "COOKIEBANNER",
    "FOOTERTEXT",
    "TRACKERSCRIPT",
    "SIDEBARPROMO",
    "Accept all cookies",
)


def returns_page() -> str:
    return (SITE / "returns.html").read_text()


def test_html_keeps_the_main_content_and_drops_the_chrome() -> None:
    doc = extract(returns_page(), url="http://shop.test/returns.html")
    text = "\n".join(p.title + p.headings + p.text for p in doc.passages)
    assert "full refund" in text
    assert "Gift cards" in text
    for chrome in CHROME:
        assert chrome not in text


def test_html_passages_carry_title_url_and_heading_path() -> None:
    doc = extract(returns_page(), url="http://shop.test/returns.html", modified=5.0)
    assert doc.title == "Returns policy"
    assert doc.modified == 5.0
    by_heading = {p.headings: p for p in doc.passages}
    assert "Gift cards" in by_heading["Refunds > Exceptions"].text
    assert "another size" in by_heading["Exchanges"].text
    assert all(p.url == "http://shop.test/returns.html" for p in doc.passages)
    assert all(p.title == "Returns policy" for p in doc.passages)


def test_markdown_headings_make_the_path_and_code_fences_are_not_headings() -> None:
    markdown = (
        "# Setup guide\n\nRead this first.\n\n## Install\n\n```sh\n# a comment\n"
        "make install\n```\n\n### On Debian\n\napt install acme\n\n## Use\n\nRun it."
    )
    doc = extract(markdown, url="file:///guide.md", content_type="text/markdown")
    assert doc.title == "Setup guide"
    assert [p.headings for p in doc.passages] == [
        "",
        "Install",
        "Install > On Debian",
        "Use",
    ]
    assert "# a comment" in doc.passages[1].text


def test_plain_text_is_one_section_titled_by_its_first_line() -> None:
    doc = extract(
        "Opening hours\n\n# Monday to Friday 9 to 5.\n",
        url="file:///hours.txt",
        content_type="text/plain; charset=utf-8",
    )
    assert doc.title == "Opening hours"
    assert [p.headings for p in doc.passages] == [""]
    assert "# Monday" in doc.passages[0].text


def test_long_text_splits_into_bounded_passages() -> None:
    paragraph = " ".join(f"word{i}" for i in range(100)) + "."
    text = "\n\n".join([paragraph] * 10) + "\n\n" + "x " * 5000
    doc = extract(text, url="file:///long.txt", content_type="text/plain")
    assert len(doc.passages) > 5
    assert all(len(p.text.split()) <= MAX_WORDS for p in doc.passages)


def test_a_huge_document_stops_at_the_passage_cap() -> None:
    text = "\n\n".join(f"## Part {i}\n\nSome words for part {i}." for i in range(5000))
    doc = extract(text, url="file:///huge.md", content_type="text/markdown")
    assert len(doc.passages) == MAX_PASSAGES


@pytest.mark.parametrize(
    "content",
    ["", "<html>", "<<<>>>" * 1000, "<html><body><p>\x00\x01</p></body></html>"],
)
def test_malformed_or_empty_html_gives_no_passages_and_no_error(content: str) -> None:
    doc = extract(content, url="http://shop.test/x")
    assert isinstance(doc.passages, tuple)


def test_bytes_are_decoded_leniently() -> None:
    doc = extract(b"caf\xc3\xa9 \xff open", url="u", content_type="text/plain")
    assert "café" in doc.passages[0].text


@pytest.mark.parametrize("content_type", ["image/png", "application/pdf", ""])
def test_other_content_types_are_refused(content_type: str) -> None:
    with pytest.raises(UnsupportedContent):
        extract(b"\x89PNG", url="u", content_type=content_type)


def test_a_pages_own_charset_is_honoured() -> None:
    page = (
        '<html><head><meta charset="iso-8859-1"><title>Caf\xe9</title></head>'
        "<body><article><h1>Caf\xe9 cr\xe8me</h1><p>Le caf\xe9 est ouvert du lundi "
        "au vendredi, de huit heures \xe0 dix-huit heures, toute l'ann\xe9e.</p>"
        "</article></body></html>"
    ).encode("iso-8859-1")
    doc = extract(page, url="http://shop.test/cafe", content_type="text/html")
    assert "café est ouvert" in doc.passages[0].text


def test_a_text_files_declared_charset_is_honoured() -> None:
    doc = extract(
        "Öffnungszeiten: täglich".encode("latin-1"),
        url="u",
        content_type="text/plain; charset=ISO-8859-1",
    )
    assert doc.title == "Öffnungszeiten: täglich"
    odd = extract(b"plain", url="u", content_type="text/plain; charset=no-such")
    assert odd.passages[0].text == "plain"


def man_page(description: str = "") -> str:
    # The shape of AsciiDoc's man pages (git's among them): the NAME line sits
    # in the header beside <h1>, outside the content container.
    words = " ".join(f"filler{i}" for i in range(60))
    return (
        "<html><head><title>git-clean(1)</title></head><body class='manpage'>"
        "<div id='header'><h1>git-clean(1) Manual Page</h1><h2>NAME</h2>"
        "<div class='sectionbody'><p>git-clean - Remove untracked files from "
        "the working tree</p></div></div><div id='content'>"
        f"<div class='sect1'><h2>DESCRIPTION</h2><div class='sectionbody'>"
        f"<div class='paragraph'><p>Cleans the tree. {description} {words}</p></div>"
        f"</div></div><div class='sect1'><h2>OPTIONS</h2>"
        f"<div class='sectionbody'><p>Use -n for a dry run. {words}</p></div></div>"
        "</div></body></html>"
    )


def test_a_man_pages_name_line_heads_every_passage() -> None:
    doc = extract(man_page(), url="http://docs.test/git-clean")
    lead = "git-clean - Remove untracked files from the working tree"
    assert [p.headings for p in doc.passages] == [
        f"{lead} > DESCRIPTION",
        f"{lead} > OPTIONS",
    ]


def test_a_lead_already_in_the_content_is_not_repeated() -> None:
    page = (
        "<html><body><article><h1>Returns</h1><p>Send it back within thirty "
        "days for a full refund of the price you paid.</p><h2>Exchanges</h2>"
        "<p>Exchanges are free of charge for another size or colour.</p>"
        "</article></body></html>"
    )
    doc = extract(page, url="http://shop.test/returns")
    assert [p.headings for p in doc.passages] == ["", "Exchanges"]


def test_a_code_span_broken_over_lines_does_not_hide_the_next_heading() -> None:
    # trafilatura writes such a <code> as a fence opened mid-line; the
    # fence's closing line must not be taken for an opening one.
    doc = extract(
        man_page("See <code>git update-index\n--split-index</code> for more."),
        url="http://docs.test/git-clean",
    )
    assert [p.headings.rsplit(" > ", 1)[-1] for p in doc.passages] == [
        "DESCRIPTION",
        "OPTIONS",
    ]


@pytest.mark.parametrize(
    "fragment",
    [
        "<p>Our shop opens at nine on Sundays.</p>",
        b"<p>Our shop opens at nine on Sundays.</p>",
        "<h2>Hours</h2>\n<p>Our shop opens at nine on Sundays.</p>",
        "<div><ul><li>Our shop opens at nine on Sundays.</li></ul></div>",
    ],
)
def test_an_html_fragment_is_read_as_a_pages_body(
    fragment: str | bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # What a CMS pushes: a post's rendered body, not a whole page.
    doc = extract(fragment, url="http://shop.test/hours")
    assert doc.passages and "opens at nine on Sundays" in doc.passages[0].text
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_a_comment_line_in_a_code_listing_is_not_a_heading() -> None:
    # trafilatura can give a <pre> back unfenced: its "# comment" lines
    # would read as Markdown headings and name the passages after them.
    html = (
        "<html><body><main><h1>Manual</h1><h2>Ignoring files</h2>"
        "<p>How to keep generated files out of the repository, with a list"
        " of patterns in a file at the top of the working tree.</p>"
        "<pre>$ cat .gitignore\n# Ignore objects and archives.\n*.[oa]\n"
        "# Ignore generated html files,\n*.html</pre>"
        "<p>Patterns are matched against paths relative to that file.</p>"
        "<h2>Next <code>steps</code></h2><p>Commit the ignore file itself so"
        " that everyone who clones the repository gets the same list.</p>"
        "</main></body></html>"
    )
    doc = extract(html, url="http://docs.test/manual")
    paths = [p.headings.split(" > ") for p in doc.passages]
    assert not any("Ignore objects and archives." in path for path in paths)
    assert ["Ignoring files"] in paths or ["Manual", "Ignoring files"] in paths
    assert any(path[-1] == "Next steps" for path in paths)
    assert any("Ignore objects and archives." in p.text for p in doc.passages)


def test_headings_keep_code_names_whole_and_lose_markdown_escapes() -> None:
    # API references name their sections after functions: the underscores
    # of child_process.exec() or ERR_FS_FILE_TOO_LARGE are part of the name,
    # and an escaped bracket is a bracket.
    html = (
        "<html><body><main><h1>Child process</h1>"
        "<h2><code>child_process.exec(command[, options])</code></h2>"
        "<p>Spawns a shell and runs a command within that shell, passing the"
        " output to a callback when the command completes.</p>"
        "<h2><code>ERR_FS_FILE_TOO_LARGE</code></h2>"
        "<p>An attempt was made to read a file larger than a buffer can hold,"
        " which is about two gigabytes.</p>"
        "<h2>Stream [src] and <em>emphasis</em><a href='#s'>\u00b6</a></h2>"
        "<p>Streams move data in chunks, so that a large file never has to be"
        " held in memory whole.</p></main></body></html>"
    )
    doc = extract(html, url="http://docs.test/child_process.html")
    assert [p.headings.rsplit(" > ", 1)[-1] for p in doc.passages] == [
        "child_process.exec(command[, options])",
        "ERR_FS_FILE_TOO_LARGE",
        "Stream [src] and emphasis",
    ]


def test_a_site_wide_h1_gives_way_to_the_pages_name_in_its_title() -> None:
    # Node.js's reference: every page's <h1> is the site's name, and the
    # <title> says which page it is beside that name.
    html = (
        "<html><head><title>File system | Acme Docs v2</title></head><body>"
        "<header><h1>Acme Docs v2</h1></header><main>"
        "<h2>File system</h2><p>The file system module reads and writes files"
        " on the local disk, with promise and callback forms of each call.</p>"
        "<h3>Reading files</h3><p>Use readFile to load a whole file into memory"
        " at once, or a stream to read a large one piece by piece.</p>"
        "</main></body></html>"
    )
    doc = extract(html, url="http://docs.test/fs.html")
    assert doc.title == "File system"
    paths = [p.headings for p in doc.passages]
    assert "Reading files" in paths
    assert not [path for path in paths if "Acme Docs" in path]


def test_an_h1_that_is_the_pages_own_name_stays_its_title() -> None:
    html = (
        "<html><head><title>git-mv(1)</title></head><body><main>"
        "<h1>git-mv(1) Manual Page</h1><h2>DESCRIPTION</h2><p>Move or rename a"
        " file, a directory, or a symlink, and update the index to match.</p>"
        "</main></body></html>"
    )
    assert extract(html, url="http://docs.test/git-mv").title == (
        "git-mv(1) Manual Page"
    )


def test_permalink_pilcrows_stay_out_of_titles_headings_and_text() -> None:
    # Sphinx's pages: every heading and every definition ends in a link "¶".
    html = (
        "<html><head><title>zipfile \u2014 ZIP archives \u2014 Acme 3.1</title>"
        "</head><body><div role='main'><section><h1><code>zipfile</code>"
        " \u2014 ZIP archives<a class='headerlink' href='#m'>\u00b6</a></h1>"
        "<p>The ZIP file format is a common archive and compression standard;"
        " this module creates, reads, writes and lists ZIP files.</p><section>"
        "<h2>Functions<a class='headerlink' href='#f'>\u00b6</a></h2><dl><dt"
        " id='is_zipfile'>is_zipfile(filename)<a class='headerlink'"
        " href='#z'>\u00b6</a></dt><dd><p>Returns True if filename is a valid"
        " ZIP file based on its magic number.</p></dd></dl></section></section>"
        "</div></body></html>"
    )
    doc = extract(html, url="http://docs.test/zipfile.html")
    assert doc.title == "zipfile \u2014 ZIP archives"
    assert [p.headings for p in doc.passages] == ["", "Functions"]
    assert not [p for p in doc.passages if "\u00b6" in p.text]
