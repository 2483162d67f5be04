"""Finds words shown to people that are not marked for translation (tests/test_i18n.py).

Templates: Django's own lexer splits a template into text, variables and tags. Text
inside {% translate %} and {% blocktranslate %} is marked; what is left is parsed as
HTML, and any of its text, or a title/aria-label/placeholder/alt attribute, that holds
a word is reported, except a short list of names that are the same in every language.

Page scripts: every string literal (and the fixed text of a template literal) that
reads like words is reported unless it is the argument of gettext() or ngettext(), or
plainly code: a class name, a selector, an event or key name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from django.template.base import Lexer, TokenType

# Shown as they are in every language: the product's name and the export formats.
# (Key names in <kbd> and code in <code> are not checked: they are marked where they vary.)
TEMPLATE_ALLOWED = {"SanjAI", "JSON", "Markdown"}
SHOWN_ATTRIBUTES = {"title", "aria-label", "placeholder", "alt"}
WORD = re.compile(r"[^\W\d_]{2,}")
CLASS_NAME = re.compile(r"(?<![\w-])[a-z]+(-[a-z]+)+(?![\w-])")


@dataclass(frozen=True)
class Unmarked:
    path: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.text!r}"


# --- Templates --------------------------------------------------------------------

HOLE = " "  # where a tag, a variable or a translated string was: not the template's own text


def _marked_out(source: str) -> tuple[str, list[Unmarked]]:
    """The template with its tags, variables and translated parts replaced by HOLE,
    and the variables whose filters carry words of their own (`default:"New chat"`)."""
    out: list[str] = []
    literals: list[Unmarked] = []
    depth = 0  # inside {% blocktranslate %} ... {% endblocktranslate %}, or a {% comment %}
    for token in Lexer(source).tokenize():
        if token.token_type == TokenType.BLOCK:
            name = token.contents.split()[0] if token.contents else ""
            if name in {"blocktranslate", "blocktrans", "comment"}:
                depth += 1
            elif name in {"endblocktranslate", "endblocktrans", "endcomment"}:
                depth -= 1
            out.append(HOLE)
        elif token.token_type == TokenType.VAR:
            literals.extend(
                Unmarked("", token.lineno, literal)
                for literal in re.findall(r'"([^"]*)"', token.contents)
                if " " in literal and WORD.search(literal)
            )
            out.append(HOLE)
        elif token.token_type == TokenType.TEXT and depth == 0:
            out.append(token.contents)
        elif token.token_type == TokenType.TEXT:
            out.append("\n" * token.contents.count("\n") or HOLE)  # keeps the line numbers
    return "".join(out), literals


class _TextFinder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[int, str]] = []
        self.skipping = 0  # inside <script>, <style>, <code> or <kbd>: not words for people

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in {"script", "style", "code", "kbd", "svg"}:
            self.skipping += 1
        for name, value in attrs:
            if name in SHOWN_ATTRIBUTES and value:
                self._check(value)

    def handle_endtag(self, tag: str) -> None:
        if tag in {"script", "style", "code", "kbd", "svg"} and self.skipping:
            self.skipping -= 1

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self._check(data)

    def _check(self, text: str) -> None:
        plain = CLASS_NAME.sub(" ", text)  # a block that fills in a class attribute ("chat-body")
        if [word for word in WORD.findall(plain) if word not in TEMPLATE_ALLOWED]:
            self.found.append((self.getpos()[0], " ".join(text.split())))


def template_unmarked(path: Path, root: Path) -> list[Unmarked]:
    source = path.read_text()
    text, literals = _marked_out(source)
    finder = _TextFinder()
    finder.feed(text)
    finder.close()
    name = str(path.relative_to(root))
    found = [Unmarked(name, line, words) for line, words in finder.found]
    return found + [Unmarked(name, item.line, item.text) for item in literals]


# --- Page scripts -----------------------------------------------------------------

# Words that are code in these scripts: DOM events, keys, headers, error names.
SCRIPT_ALLOWED = {
    "Escape",
    "Enter",
    "ArrowUp",
    "ArrowDown",
    "KeyO",
    "Slash",
    "Files",
    "AbortError",
    "Accept",
    "Content-Type",
    "X-CSRFToken",
    "INPUT",
    "TEXTAREA",
    "SELECT",
    "SanjAI",
    "RIFF",
    "WAVEfmt ",
    "use strict",
    "noopener noreferrer nofollow",  # a link's rel
}
# A literal right after one of these is code: a class name, a selector, an attribute.
CODE_BEFORE = re.compile(
    r"(className\s*[=:]\s*|classList\.\w+\(\s*|querySelector(All)?\(\s*|closest\??\.?\(\s*|"
    r"getElementById\(\s*|createElement(NS)?\(\s*|console\.\w+\(\s*|\.dataset\.\w+\s*===?\s*|"
    # A programmer's error, never shown: the page catches it and falls back.
    r"throw new Error\(\s*)$"
)
MARKED_BEFORE = re.compile(r"\b(n?gettext)\(\s*$")
CODE_LIKE = re.compile(r"(^|\s)[.#]\w|\[|=|\||^/|^[\w-]+/[\w.+-]+$|^https?:|^\w+\.\w+$|^[a-z]+(-[a-z]+)+$")


JS_HOLE = "\x00"  # a template literal's ${...}


@dataclass
class _Literal:
    start: int
    text: str  # a template literal's fixed parts, its ${...} as JS_HOLE


def _literals(source: str) -> list[_Literal]:
    """The string literals of a script, skipping comments and regular expressions."""
    found: list[_Literal] = []
    i, n = 0, len(source)
    last = ""  # the last significant character: a "/" after an operand divides, else starts a regex
    while i < n:
        c = source[i]
        if source.startswith("//", i):
            i = source.find("\n", i) if "\n" in source[i:] else n
        elif source.startswith("/*", i):
            i = source.index("*/", i) + 2
        elif c in "'\"":
            j = i + 1
            while source[j] != c:
                j += 2 if source[j] == "\\" else 1
            found.append(_Literal(i, source[i + 1 : j]))
            i, last = j + 1, "a"
        elif c == "`":
            i, last = _template_literal(source, i, found), "a"
        elif c == "/" and (
            not last or last in "(,=:[!&|?{};+-*%<>~^" or source[:i].rstrip().endswith("return")
        ):
            j, in_class = i + 1, False  # a regular expression literal
            while source[j] != "/" or in_class:
                if source[j] == "\\":
                    j += 1
                elif source[j] == "[":
                    in_class = True
                elif source[j] == "]":
                    in_class = False
                j += 1
            i, last = j + 1, "a"
        else:
            if not c.isspace():
                last = c if not (c.isalnum() or c in "_$)]") else "a"
            i += 1
    return found


def _template_literal(source: str, start: int, found: list[_Literal]) -> int:
    text: list[str] = []
    i = start + 1
    while source[i] != "`":
        if source[i] == "\\":
            text.append(source[i : i + 2])
            i += 2
        elif source.startswith("${", i):
            depth, i = 1, i + 2
            inner_start = i
            while depth:
                if source[i] in "'\"`":  # a string inside the expression: found on its own
                    quote, j = source[i], i + 1
                    while source[j] != quote:
                        j += 2 if source[j] == "\\" else 1
                    i = j
                depth += {"{": 1, "}": -1}.get(source[i], 0)
                i += 1
            found.extend(
                _Literal(inner_start + item.start, item.text)
                for item in _literals(source[inner_start : i - 1])
            )
            text.append(JS_HOLE)
        else:
            text.append(source[i])
            i += 1
    found.append(_Literal(start, "".join(text)))
    return i + 1


def _reads_as_words(text: str) -> bool:
    plain = re.sub(r"%\(\w+\)s", " ", text).replace(JS_HOLE, " ").strip()
    if not plain or plain in SCRIPT_ALLOWED or CODE_LIKE.search(plain):
        return False
    words = WORD.findall(plain)
    if len(words) >= 2 and " " in plain:
        return True
    return bool(re.match(r"[A-Z][a-z]+", plain))


def script_unmarked(path: Path, root: Path) -> list[Unmarked]:
    source = path.read_text()
    found = []
    plural_next = False  # the second argument of ngettext(): marked too
    for literal in _literals(source):
        before = source[max(0, literal.start - 60) : literal.start]
        marked = MARKED_BEFORE.search(before) is not None or (plural_next and before.rstrip().endswith(","))
        plural_next = re.search(r"\bngettext\(\s*$", before) is not None
        if marked or CODE_BEFORE.search(before) or not _reads_as_words(literal.text):
            continue
        line = source.count("\n", 0, literal.start) + 1
        found.append(Unmarked(str(path.relative_to(root)), line, literal.text.replace(JS_HOLE, "${…}")))
    return found
