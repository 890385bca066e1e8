"""Pages to passages: the main content of HTML, Markdown or text, split by heading."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import trafilatura
from trafilatura.metadata import extract_title
from trafilatura.settings import Document
from trafilatura.utils import load_html

from chatapp.knowledge.index import KnowledgeError
from chatapp.knowledge.index import Passage

# Larger inputs are cut here before parsing: lxml's tree of a 100 MB page
# would cost a worker gigabytes, and no answer needs more than the start.
MAX_INPUT_CHARS = 2_000_000
# A document yields at most this many passages: an API reference gives one
# per function (Node.js's fs page, 279); MAX_INPUT_CHARS bounds the words.
MAX_PASSAGES = 1000
# Passages aim at TARGET words and never exceed MAX: long enough to hold an
# answer with its context, short enough that several fit a turn's budget.
TARGET_WORDS = 220
MAX_WORDS = 320

# The page's lead (the paragraphs beside its <h1>, outside the main content)
# is kept up to this many words; a longer block is the content itself.
LEAD_WORDS = 80

HTML_TYPES = ("text/html", "application/xhtml+xml")
MARKDOWN_TYPES = ("text/markdown", "text/x-markdown")
TEXT_TYPES = ("text/plain",)
CONTENT_TYPES = HTML_TYPES + MARKDOWN_TYPES + TEXT_TYPES

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_BLANK_LINES = re.compile(r"\n\s*\n")
# What separates a page's name from its site's in a <title>.
_TITLE_PARTS = re.compile(r"\s+(?:[|\-\u2013\u2014\u00b7\u00bb:]|::)\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORDS = re.compile(r"\w+")


class UnsupportedContent(KnowledgeError):
    """The document is of a type the index does not read."""


@dataclass(frozen=True, slots=True)
class Extracted:
    """One document's title and passages, ready for `Index.replace`."""

    url: str
    title: str
    passages: tuple[Passage, ...]
    modified: float | None = None


def media_type(content_type: str) -> str:
    """Reduce a Content-Type header to its lower-case media type."""
    return content_type.split(";", 1)[0].strip().lower()


def extract(
    content: str | bytes,
    *,
    url: str,
    content_type: str = "text/html",
    title: str = "",
    modified: float | None = None,
) -> Extracted:
    """Turn one document into passages; HTML is reduced to its main content."""
    kind = media_type(content_type)
    if kind not in CONTENT_TYPES:
        raise UnsupportedContent(f"{kind or 'no content type'} is not indexed")
    if kind in HTML_TYPES:
        # Bytes go to trafilatura as they are: it reads the page's own
        # charset (meta tag, or a guess) where a wrong header would garble it.
        found_title, lead, markdown, headings = _main_content(
            content[:MAX_INPUT_CHARS], url
        )
        title = title or found_title
        sections = _sections(markdown, headings)
    else:
        lead = ""
        markdown = _decode(content, content_type)[:MAX_INPUT_CHARS]
        if kind in MARKDOWN_TYPES:
            sections = _sections(markdown)
        else:
            # A line starting with "#" in a text file is not a heading.
            text = markdown.strip()
            sections = [((), text)] if text else []
    if not title:
        title = _first_heading(sections) or _first_line(markdown) or url
    passages = split(url, title, sections, lead=lead)
    return Extracted(url=url, title=title, passages=tuple(passages), modified=modified)


def _decode(content: str | bytes, content_type: str) -> str:
    if isinstance(content, str):
        return content
    charset = "utf-8"
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"') or charset
    data = content[: MAX_INPUT_CHARS * 4]
    try:
        return data.decode(charset, errors="replace")
    except LookupError:  # a charset Python does not know
        return data.decode("utf-8", errors="replace")


def _main_content(html: str | bytes, url: str) -> tuple[str, str, str, frozenset[str]]:
    # trafilatura drops navigation, headers, footers, cookie banners, scripts
    # and comments, and keeps headings as Markdown so the split below can
    # follow them. Without recall bias, short product pages come back empty.
    # Its metadata pass (dates, authors) would double the time per page, and
    # `fast` skips the fallback extractors: together about 2x the pages/s.
    tree = load_html(html) if _is_document(html) else None
    if tree is None:
        # A fragment (a post's rendered body pushed alone, say): lxml would
        # make no document of it. Parsed as a page's body, it is one.
        prefix = "<!DOCTYPE html><html><body>"
        body = prefix.encode() + html if isinstance(html, bytes) else prefix + html
        tree = load_html(body)
    if tree is None:
        return "", "", "", frozenset()
    found = (extract_title(tree) or "").rstrip("\u00b6 ")
    title, site = _page_title(tree, found)
    # Before trafilatura, which may prune the tree.
    paragraphs = _lead(tree)
    headings = frozenset(
        _words(element.text_content())
        for element in tree.iter("h1", "h2", "h3", "h4", "h5", "h6")
    )
    document = trafilatura.bare_extraction(
        tree,
        url=url or None,
        fast=True,
        with_metadata=False,
        include_formatting=True,
        include_comments=False,
        include_images=False,
        include_links=False,
        include_tables=True,
        favor_recall=True,
        deduplicate=False,
        output_format="python",
    )
    markdown = document.text or "" if isinstance(document, Document) else ""
    # Sphinx marks every heading and definition with a permalink pilcrow.
    markdown = markdown.replace("\u00b6", "")
    if site:
        markdown = _without_heading(markdown, site)
    # With output_format="python", .text is the body as Markdown already.
    lead = " ".join(p for p in paragraphs if not _contains(markdown, p))
    return title.strip(), lead, markdown, headings


def _page_title(tree: Any, found: str) -> tuple[str, str]:
    """The page's title, and the site's name when its <h1> holds that instead.

    A site whose every page has the same <h1> (its name: "Node.js
    documentation") says what the page is in its <title>, beside that name
    ("File system | Node.js documentation"); every page titled by the <h1>
    would be named alike in a list of sources and match no question.
    """
    element = tree.find(".//head/title")
    text = " ".join(element.text_content().split()) if element is not None else ""
    parts = [part for part in _TITLE_PARTS.split(text) if part]
    # "Page | Site" is the common order: an <h1> that reads as the first
    # part is the page's own name ("Returns policy | Acme").
    name = found.strip().casefold()
    if name and any(p.casefold() == name for p in parts[1:]):
        return parts[0], found.strip()
    return found, ""


def _without_heading(markdown: str, name: str) -> str:
    """Drop the first heading line that reads `name` (the site's, not the page's)."""
    lines = markdown.splitlines()
    for i, line in enumerate(lines):
        match = _HEADING.match(line)
        if match and _clean_heading(match.group(2)).casefold() == name.casefold():
            return "\n".join(lines[:i] + lines[i + 1 :])
    return markdown


def _is_document(html: str | bytes) -> bool:
    """Tell whether `html` opens as a whole page (a doctype, <html>, <head>,
    or <body> before any other tag), not as a fragment."""
    start = html[:2048].lstrip()
    head = (start.decode("latin-1") if isinstance(start, bytes) else start).lower()
    head = head.lstrip("\ufeff\xef\xbb\xbf")
    while head.startswith("<!--"):
        head = head.partition("-->")[2].lstrip()
    while head.startswith("<?"):
        head = head.partition("?>")[2].lstrip()
    return head.startswith(("<!doctype", "<html", "<head", "<body", "<meta", "<title"))


def _lead(tree: Any) -> list[str]:
    """The paragraphs in the block of the page's first <h1>, when short.

    trafilatura keeps the main content container and drops the page header
    around it; on AsciiDoc's man pages (git's, and many projects') that
    header holds the NAME line, the one sentence that says what the page is
    for ("git-clean - Remove untracked files from the working tree").
    """
    heads = tree.xpath("//body//h1")
    block = heads[0].getparent() if heads else None
    if block is None or block.tag == "body":
        return []
    texts = (" ".join(p.text_content().split()) for p in block.iter("p"))
    paragraphs = [text for text in texts if text]
    words = sum(len(text.split()) for text in paragraphs)
    return paragraphs if words <= LEAD_WORDS else []


def _words(text: str) -> str:
    return " ".join(_WORDS.findall(text.lower()))


def _contains(markdown: str, text: str) -> bool:
    """Tell whether `text`'s words appear in a row in `markdown`."""
    return f" {_words(text)} " in f" {_words(markdown)} "


def _sections(
    markdown: str, headings: frozenset[str] | None = None
) -> list[tuple[tuple[str, ...], str]]:
    """Cut Markdown at its headings: (heading path, body) in document order.

    From HTML, `headings` are the page's own <h1>-<h6> texts: a `#` line that
    is none of them is text (a shell comment in a <pre> that came out
    unfenced), not a heading.
    """
    path: list[tuple[int, str]] = []
    sections: list[tuple[tuple[str, ...], str]] = []
    body: list[str] = []
    fenced = False

    def flush() -> None:
        text = "\n".join(body).strip()
        if text:
            sections.append((tuple(name for _, name in path), text))
        body.clear()

    for line in markdown.splitlines():
        # trafilatura writes a <code> that spans lines as a fence opened at
        # the end of a line of text: every unpaired ``` on a line toggles.
        if _FENCE.match(line) or line.lstrip()[:3] != "```" and line.count("```") % 2:
            fenced = not fenced
        match = None if fenced else _HEADING.match(line)
        if match is not None and headings is not None:
            if _words(match.group(2)) not in headings:
                match = None
        if match is None:
            body.append(line)
            continue
        flush()
        level = len(match.group(1))
        name = _clean_heading(match.group(2))
        while path and path[-1][0] >= level:
            path.pop()
        path.append((level, name))
        # A heading with no body of its own still names what follows it.
    flush()
    if not sections and path:
        sections.append((tuple(name for _, name in path), ""))
    return sections


_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# Emphasis markers: a run of * or _ not inside a word (snake_case keeps its
# underscores) and not escaped.
_EMPHASIS = re.compile(r"(?<![\\\w])[*_]+|(?<=\w)[*_]+(?!\w)")
_ESCAPED = re.compile(r"\\([!-/:-@\[-`{-~])")


def _clean_heading(text: str) -> str:
    """A Markdown heading's text: code spans as written, no emphasis or escapes.

    `child_process.exec()` stays itself; `**Note**` is Note; `Stream\\[src\\]`
    is Stream[src].
    """
    parts = []
    last = 0
    for span in _CODE_SPAN.finditer(text):
        parts.append(_plain(text[last : span.start()]))
        parts.append(span.group(2).strip())
        last = span.end()
    parts.append(_plain(text[last:]))
    # A permalink mark after the name (Sphinx's pilcrow, a section sign).
    return "".join(parts).strip().rstrip("\u00b6\u00a7").rstrip()


def _plain(text: str) -> str:
    return _ESCAPED.sub(r"\1", _EMPHASIS.sub("", text))


def _first_heading(sections: list[tuple[tuple[str, ...], str]]) -> str:
    for headings, _ in sections:
        if headings:
            return headings[0]
    return ""


def _first_line(text: str) -> str:
    for line in text.splitlines():
        line = line.strip().lstrip("#").strip()
        if line:
            return line[:120]
    return ""


def split(
    url: str,
    title: str,
    sections: list[tuple[tuple[str, ...], str]],
    *,
    lead: str = "",
) -> list[Passage]:
    """Split sections into passages of a few hundred words, headings kept.

    A `lead` (the page's one-line summary, when the main content lacks it)
    starts every heading path, so that each passage carries what its page
    is about: git-clean's "--dry-run" option is found as part of the page
    that removes untracked files. A page with no other text keeps the lead
    as its one passage.
    """
    if lead and not sections:
        sections = [((), lead)]
    passages: list[Passage] = []
    for headings, body in sections:
        # The page's own title as first heading adds nothing to the path.
        if headings and headings[0].casefold() == title.casefold():
            headings = headings[1:]
        path = " > ".join((lead, *headings) if lead else headings)
        for chunk in _chunks(body):
            passages.append(Passage(url=url, title=title, headings=path, text=chunk))
            if len(passages) >= MAX_PASSAGES:
                return passages
    return passages


def _chunks(body: str) -> list[str]:
    """Group paragraphs into chunks of about TARGET_WORDS, none over MAX_WORDS."""
    pieces: list[str] = []
    for paragraph in _BLANK_LINES.split(body):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        if len(paragraph.split()) <= MAX_WORDS:
            pieces.append(paragraph)
        else:
            pieces.extend(_cut_long(paragraph))
    chunks: list[str] = []
    current: list[str] = []
    words = 0
    for piece in pieces:
        count = len(piece.split())
        if current and (words >= TARGET_WORDS or words + count > MAX_WORDS):
            chunks.append("\n\n".join(current))
            current, words = [], 0
        current.append(piece)
        words += count
    if current:
        chunks.append("\n\n".join(current))
    return chunks


def _cut_long(paragraph: str) -> list[str]:
    """Cut one long paragraph at sentence ends, or at words when it has none."""
    out: list[str] = []
    current: list[str] = []
    words = 0
    for sentence in _SENTENCE_END.split(paragraph):
        tokens = sentence.split()
        while len(tokens) > MAX_WORDS:
            if current:
                out.append(" ".join(current))
                current, words = [], 0
            out.append(" ".join(tokens[:MAX_WORDS]))
            tokens = tokens[MAX_WORDS:]
        if current and words + len(tokens) > TARGET_WORDS:
            out.append(" ".join(current))
            current, words = [], 0
        current.append(" ".join(tokens))
        words += len(tokens)
    if current:
        out.append(" ".join(current))
    return [piece for piece in out if piece]
