"""The pages in docs/ are accurate to the code: their Python examples run, the index lists every
page, and every public callable of fastgrad, fastgrad.nn and fastgrad.optim has a docstring.

Examples: every ```python block of a page runs, in order, in one namespace per page (a page can
build on its earlier blocks), in a temporary working directory. A block whose fence is directly
preceded by a line ``<!-- skip-test -->`` is not run; use it sparingly, for examples that need
something a test run cannot have (a download, minutes of compute). Blocks in other languages
(```bash, ```diff, plain ```) are never run. Tracebacks point at the page's own line numbers.
"""

import inspect
import pathlib
import re

import pytest

import fastgrad as fg

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
SKIP_MARKER = "<!-- skip-test -->"


def python_blocks(text):
    """(first line number, source) of each ```python block not marked with SKIP_MARKER."""
    for m in re.finditer(r"^```python[ \t]*\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
        before = text[: m.start()].rstrip("\n").splitlines()
        if before and before[-1].strip() == SKIP_MARKER:
            continue
        yield text.count("\n", 0, m.start()) + 2, m.group(1)


def test_the_docs_have_python_examples():
    assert PAGES, "docs/ has no pages"
    assert any(list(python_blocks(p.read_text())) for p in PAGES)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_docs_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    namespace = {"__name__": f"docs.{page.stem}"}
    for line, source in python_blocks(page.read_text()):
        padded = "\n" * (line - 1) + source  # so a traceback names the line in the page
        exec(compile(padded, f"docs/{page.name}", "exec"), namespace)  # noqa: S102


def test_the_docs_index_lists_every_page():
    index = (DOCS / "README.md").read_text()
    linked = set(re.findall(r"\]\(([\w.-]+\.md)\)", index))
    missing = [p.name for p in PAGES if p.name != "README.md" and p.name not in linked]
    assert not missing, f"docs/README.md does not link {missing}"


# ----------------------------------------------------------------------------- docstrings
def public_callables():
    """(qualified name, object) of every public callable of fastgrad, fastgrad.nn and
    fastgrad.optim: the names in ``__all__``, or, for a module without one, the callables it
    defines (not those it imports) whose names do not start with "_". The static methods of the
    namespaces ``fg.nn.init`` and ``fg.nn.utils`` (spelled as torch.nn.init / torch.nn.utils)
    count as public functions too."""
    out = []
    for public, mod in (("fastgrad", fg), ("fastgrad.nn", fg.nn), ("fastgrad.optim", fg.optim)):
        names = getattr(mod, "__all__", None)
        if names is None:
            names = [
                n
                for n, o in vars(mod).items()
                if not n.startswith("_") and getattr(o, "__module__", None) == mod.__name__
            ]
        for name in names:
            obj = getattr(mod, name)
            if callable(obj) and not inspect.ismodule(obj):
                out.append((f"{public}.{name}", obj))
    for ns in (fg.nn.init, fg.nn.utils):
        for name, attr in vars(ns).items():
            if not name.startswith("_") and isinstance(attr, staticmethod):
                out.append((f"fastgrad.nn.{ns.__name__}.{name}", attr.__func__))
    return out


def has_docstring(obj) -> bool:
    # a class must have its own docstring: one inherited from a base class says nothing about it
    doc = vars(obj).get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    return bool(doc and doc.strip())


def test_public_callables_have_docstrings():
    names = [name for name, _ in public_callables()]
    assert "fastgrad.compile" in names and "fastgrad.optim.Adam" in names
    missing = sorted(name for name, obj in public_callables() if not has_docstring(obj))
    assert not missing, f"public callables without a docstring: {missing}"
