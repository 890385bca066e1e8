"""The chat page's ES modules import one way: no loop among chatapp/static/chat/*.js.

Reads every static ``import … from './x.js'`` (and ``export … from``) of each
module and looks for a cycle, so that each module can be read knowing only
the modules below it; ``app.js`` on top wires the pieces together.
"""

from __future__ import annotations

import re
from pathlib import Path

CHAT = Path(__file__).resolve().parents[1] / "chatapp" / "static" / "chat"

# `import { a } from './x.js';`, `import x from "./x.js"`, `export { a } from
# './x.js'`, `import './x.js'` (imports may span lines; comments are dropped).
IMPORT = re.compile(
    r"""^\s*(?:import|export)\b[^;'"]*?(?:\bfrom\s*)?['"]\./([\w.-]+\.js)['"]""",
    re.MULTILINE,
)
COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.DOTALL)


def imports_of(source: str) -> set[str]:
    return set(IMPORT.findall(COMMENT.sub("", source)))


def page_graph() -> dict[str, set[str]]:
    return {path.name: imports_of(path.read_text()) for path in CHAT.glob("*.js")}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Return one import loop as a path (first module repeated at the end), or None."""
    done: set[str] = set()
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        if name in stack:
            return [*stack[stack.index(name) :], name]
        if name in done:
            return None
        stack.append(name)
        for target in sorted(graph.get(name, ())):
            if cycle := visit(target):
                return cycle
        stack.pop()
        done.add(name)
        return None

    for name in sorted(graph):
        if cycle := visit(name):
            return cycle
    return None


def test_the_reader_sees_the_imports() -> None:
    source = """
    /* import { x } from './commented.js'; */
    import { a, b } from './a.js';
    import {
      c,
    } from "./c.js";
    export { d } from './d.js';
    import './side.js';
    // import { e } from './e.js';
    const s = "import { f } from './f.js'";
    """
    assert imports_of(source) == {"a.js", "c.js", "d.js", "side.js"}


def test_the_search_finds_a_loop() -> None:
    graph = {"a.js": {"b.js"}, "b.js": {"c.js"}, "c.js": {"a.js"}, "d.js": {"a.js"}}
    assert find_cycle(graph) == ["a.js", "b.js", "c.js", "a.js"]
    assert find_cycle({"a.js": {"b.js"}, "b.js": set()}) is None


def test_every_import_is_a_module_of_the_page() -> None:
    graph = page_graph()
    assert "app.js" in graph
    assert len(graph["app.js"]) > 5
    missing = {
        f"{name} -> {target}"
        for name, targets in graph.items()
        for target in targets
        if target not in graph
    }
    assert missing == set()


def test_the_chat_modules_import_in_no_loop() -> None:
    cycle = find_cycle(page_graph())
    assert cycle is None, "import loop: " + " -> ".join(cycle or [])


def test_nothing_imports_the_entry() -> None:
    graph = page_graph()
    assert [name for name, targets in graph.items() if "app.js" in targets] == []
