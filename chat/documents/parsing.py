"""Read an uploaded file into text sections, refusing hostile input with a reason.

Every format is read by a pure-Python library (pypdf, python-docx, python-pptx,
openpyxl) or the standard library (CSV, HTML, Markdown, text, code), so a
parser crash is a Python exception, never a segfault in the web process. The
libraries are imported where they are used: a process that only chunks or
cleans names does not load them.

Checks happen before any library sees the bytes: the extension must match the
content (magic bytes), an Office file's zip must unpack to at most
`max_unpacked_bytes` at a ratio of at most `max_zip_ratio`, a PDF to at most
`max_pages` pages, and the text in all to at most `max_chars`. Time and memory
are bounded by `parse_isolated`, which runs `parse` in a child process.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import multiprocessing
import re
import unicodedata
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from multiprocessing.connection import Connection
from pathlib import PurePosixPath
from typing import Any, Literal

Kind = Literal["pdf", "docx", "pptx", "xlsx", "csv", "html", "markdown", "text", "code"]

logger = logging.getLogger(__name__)

MAX_FILENAME_CHARS = 255

CODE_EXTENSIONS = frozenset(
    {
        ".py", ".js", ".mjs", ".ts", ".tsx", ".jsx", ".java", ".kt", ".c", ".h", ".cc", ".cpp", ".hpp",
        ".cs", ".go", ".rs", ".rb", ".php", ".swift", ".scala", ".sh", ".bash", ".sql", ".r", ".lua",
        ".pl", ".css", ".scss", ".json", ".yaml", ".yml", ".toml", ".ini", ".xml", ".ipynb",
    }
)  # fmt: skip
EXTENSION_KINDS: dict[str, Kind] = {
    ".pdf": "pdf",
    ".docx": "docx",
    ".pptx": "pptx",
    ".xlsx": "xlsx",
    ".csv": "csv",
    ".html": "html",
    ".htm": "html",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".log": "text",
    **dict.fromkeys(CODE_EXTENSIONS, "code"),
}
# The part an Office file of each kind cannot be without: a zip that lacks it is
# some other zip renamed.
OFFICE_MAIN_PART = {"docx": "word/document.xml", "pptx": "ppt/presentation.xml", "xlsx": "xl/workbook.xml"}


class UnreadableDocument(Exception):
    """The file cannot be read; `reason` says why in words a user can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ParseLimits:
    """Every bound `parse` and `parse_isolated` hold to. The caller reads them from settings."""

    max_bytes: int = 50 * 1024 * 1024  # the file itself
    max_pages: int = 2000  # PDF pages, PPTX slides
    max_unpacked_bytes: int = 200 * 1024 * 1024  # an Office zip, all members uncompressed
    max_zip_ratio: int = 200  # uncompressed / compressed, over the whole zip (XML packs ~10-30x)
    max_chars: int = 5_000_000  # text extracted, all sections together
    max_memory_bytes: int = 1024 * 1024 * 1024  # the child's address space (parse_isolated)
    time_limit_s: float = 60.0  # the child's wall clock, start-up included (parse_isolated)


@dataclass(frozen=True)
class Section:
    text: str
    page: int | None = None  # 1-based: a PDF page or a PPTX slide; None where a format has none
    heading: str = ""  # the sheet name, slide title or nearest HTML/Markdown/DOCX heading


@dataclass(frozen=True)
class ParsedDocument:
    kind: Kind
    sections: list[Section] = field(default_factory=list)
    page_count: int | None = None  # PDF pages or PPTX slides; None for formats without pages


def clean_filename(name: str) -> str:
    """The last path component of `name`, without control characters, at most 255 characters.

    A browser may send a full path ("C:\\Users\\x\\report.pdf") or a hostile one
    ("../../etc/passwd"); only the final component is ever kept, so a stored name
    can never point elsewhere. Raises UnreadableDocument when nothing is left.
    """
    name = unicodedata.normalize("NFC", name)
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")  # Cc, Cf, Co, Cs, Cn
    name = PurePosixPath(name.replace("\\", "/")).name.strip().strip(".")
    if not name:
        raise UnreadableDocument(
            "the file name is empty once path separators and control characters are removed"
        )
    if len(name) > MAX_FILENAME_CHARS:
        # Cut the stem, not the extension, which says what the file is.
        _, dot, ext = name.rpartition(".")
        keep = "." + ext if dot and len(ext) <= 16 else ""
        name = name[: MAX_FILENAME_CHARS - len(keep)].rstrip(".") + keep
    return name


def kind_of(filename: str) -> Kind:
    suffix = PurePosixPath(filename.lower()).suffix
    kind = EXTENSION_KINDS.get(suffix)
    if kind is None:
        allowed = ", ".join(sorted({".pdf", ".docx", ".pptx", ".xlsx", ".csv", ".html", ".md", ".txt"}))
        raise UnreadableDocument(
            f"files ending in '{suffix or '(none)'}' are not supported; try {allowed} or source code"
        )
    return kind


def parse(data: bytes, filename: str, limits: ParseLimits) -> ParsedDocument:
    """Read `data` as the format its `filename`'s extension names, or raise UnreadableDocument."""
    if len(data) > limits.max_bytes:
        raise UnreadableDocument(
            f"the file is {_mb(len(data))} MB; at most {_mb(limits.max_bytes)} MB is read"
        )
    if not data:
        raise UnreadableDocument("the file is empty")
    kind = kind_of(clean_filename(filename))
    try:
        doc = READERS[kind](data, limits)
    except (UnreadableDocument, MemoryError):
        raise
    except Exception as error:
        # Damage no reader foresaw (an odd shape in a slide, a cell type) is still
        # the file's fault, not the server's: the user gets a reason either way.
        logger.warning("unreadable %s file", kind, exc_info=True)
        raise UnreadableDocument(f"the {kind} file could not be read ({_short(error)})") from error
    total = sum(len(s.text) for s in doc.sections)
    if total > limits.max_chars:
        raise UnreadableDocument(
            f"the file holds {total:,} characters of text; at most {limits.max_chars:,} are read"
        )
    if total == 0:
        hint = " (scanned pages would need OCR, which is not done)" if kind == "pdf" else ""
        raise UnreadableDocument(f"no text was found in this {kind} file{hint}")
    return doc


# --- PDF ---------------------------------------------------------------------------------------


def read_pdf(data: bytes, limits: ParseLimits) -> ParsedDocument:
    # The header may follow a little junk (the spec allows it, readers accept it).
    if b"%PDF-" not in data[:1024]:
        raise UnreadableDocument("the file ends in .pdf but is not a PDF (it does not start with %PDF-)")
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise UnreadableDocument("the PDF is password-protected; upload an unlocked copy")
        count = len(reader.pages)
        if count > limits.max_pages:
            raise UnreadableDocument(f"the PDF has {count:,} pages; at most {limits.max_pages:,} are read")
        sections = [
            Section(text=_tidy(page.extract_text() or ""), page=number)
            for number, page in enumerate(reader.pages, start=1)
        ]
    except UnreadableDocument:
        raise
    # pypdf raises its own errors (PyPdfError) for a broken xref or stream, and
    # plain ones (KeyError, ValueError, RecursionError...) for stranger damage.
    except Exception as error:
        raise UnreadableDocument(f"the PDF is damaged and cannot be read ({_short(error)})") from error
    return ParsedDocument(kind="pdf", sections=[s for s in sections if s.text], page_count=count)


# --- Office (zip) formats ----------------------------------------------------------------------


def check_zip(data: bytes, kind: Kind, limits: ParseLimits) -> None:
    """Refuse a renamed file or a zip bomb before any Office library opens it.

    The sizes come from the zip's central directory, which could lie; zipfile
    stops decompressing each member at its declared size (and fails its CRC
    check past it), so the declared total is also the most that can come out.
    """
    label = f".{kind}"
    if not data.startswith(b"PK\x03\x04"):
        raise UnreadableDocument(f"the file ends in {label} but is not one (a {label} file is a zip archive)")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, ValueError) as error:
        raise UnreadableDocument(f"the {label} file is damaged ({_short(error)})") from error
    if OFFICE_MAIN_PART[kind] not in {m.filename for m in members}:
        raise UnreadableDocument(f"the file ends in {label} but is a different kind of zip archive")
    unpacked = sum(m.file_size for m in members)
    packed = max(1, sum(m.compress_size for m in members))
    if unpacked > limits.max_unpacked_bytes:
        raise UnreadableDocument(
            f"the {label} file unpacks to {_mb(unpacked)} MB; "
            f"at most {_mb(limits.max_unpacked_bytes)} MB is read"
        )
    if unpacked / packed > limits.max_zip_ratio:
        raise UnreadableDocument(
            f"the {label} file unpacks {unpacked // packed}x its size, like a zip bomb; at most "
            f"{limits.max_zip_ratio}x is read"
        )


def read_docx(data: bytes, limits: ParseLimits) -> ParsedDocument:
    check_zip(data, "docx", limits)
    import docx

    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as error:
        raise UnreadableDocument(f"the .docx file is damaged ({_short(error)})") from error
    sections: list[Section] = []
    heading, lines = "", list[str]()
    # Paragraphs and tables in the order they appear in the body.
    for block in document.iter_inner_content():
        if isinstance(block, docx.table.Table):
            lines.extend(" | ".join(c.text.strip() for c in row.cells) for row in block.rows)
            continue
        text = block.text.strip()
        style = (block.style.name if block.style is not None else "") or ""
        if text and (style.startswith("Heading") or style == "Title"):
            _flush(sections, "\n".join(lines), heading)
            heading, lines = text, []
        lines.append(text)
    _flush(sections, "\n".join(lines), heading)
    return ParsedDocument(kind="docx", sections=sections)


def read_pptx(data: bytes, limits: ParseLimits) -> ParsedDocument:
    check_zip(data, "pptx", limits)
    import pptx

    try:
        presentation = pptx.Presentation(io.BytesIO(data))
        slides = list(presentation.slides)
    except Exception as error:
        raise UnreadableDocument(f"the .pptx file is damaged ({_short(error)})") from error
    if len(slides) > limits.max_pages:
        raise UnreadableDocument(
            f"the presentation has {len(slides):,} slides; at most {limits.max_pages:,} are read"
        )
    sections = []
    for number, slide in enumerate(slides, start=1):
        title = slide.shapes.title.text_frame.text.strip() if slide.shapes.title is not None else ""
        lines = [line for shape in slide.shapes for line in _shape_lines(shape)]
        if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
            lines.append(slide.notes_slide.notes_text_frame.text)
        text = _tidy("\n".join(lines))
        if text:
            sections.append(Section(text=text, page=number, heading=title))
    return ParsedDocument(kind="pptx", sections=sections, page_count=len(slides))


def _shape_lines(shape: Any) -> list[str]:
    if getattr(shape, "has_text_frame", False):
        return [shape.text_frame.text]
    if getattr(shape, "has_table", False):
        return [" | ".join(cell.text for cell in row.cells) for row in shape.table.rows]
    if hasattr(shape, "shapes"):  # a group
        return [line for inner in shape.shapes for line in _shape_lines(inner)]
    return []


def read_xlsx(data: bytes, limits: ParseLimits) -> ParsedDocument:
    check_zip(data, "xlsx", limits)
    import openpyxl

    sections = []
    chars = 0
    try:
        # read_only streams rows instead of building every cell; data_only gives
        # the cached values of formulas, not their source.
        workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
        for sheet in workbook.worksheets:
            lines = []
            for row in sheet.iter_rows(values_only=True):
                line = "\t".join("" if v is None else str(v) for v in row).rstrip("\t")
                if line:
                    lines.append(line)
                    chars += len(line)
                if chars > limits.max_chars:
                    raise UnreadableDocument(f"the workbook holds more than {limits.max_chars:,} characters")
            if lines:
                sections.append(Section(text="\n".join(lines), heading=sheet.title))
        workbook.close()
    except UnreadableDocument:
        raise
    except Exception as error:
        raise UnreadableDocument(f"the .xlsx file is damaged ({_short(error)})") from error
    return ParsedDocument(kind="xlsx", sections=sections)


# --- Text formats ------------------------------------------------------------------------------


def decode_text(data: bytes) -> str:
    """UTF-8 (with or without a BOM), UTF-16 with a BOM, else Windows-1252; never binary."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as error:
            raise UnreadableDocument("the file claims to be UTF-16 text but is not") from error
    if b"\x00" in data[:65536]:
        raise UnreadableDocument("the file is binary, not text (it holds NUL bytes)")
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise UnreadableDocument("the text is neither UTF-8 nor Windows-1252; save it as UTF-8")
    sample = text[:65536]
    controls = sum(1 for ch in sample if unicodedata.category(ch) == "Cc" and ch not in "\n\r\t\f")
    # Real text has next to none; a binary file decoded as cp1252 has many.
    if controls > len(sample) // 100:
        raise UnreadableDocument("the file is binary, not text (it is full of control characters)")
    return text


def read_text(data: bytes, limits: ParseLimits) -> ParsedDocument:
    return ParsedDocument(kind="text", sections=_sections_of(decode_text(data)))


def read_code(data: bytes, limits: ParseLimits) -> ParsedDocument:
    # Code keeps its indentation: no tidying beyond line endings.
    text = decode_text(data).replace("\r\n", "\n").strip("\n")
    return ParsedDocument(kind="code", sections=[Section(text=text)] if text.strip() else [])


def read_csv(data: bytes, limits: ParseLimits) -> ParsedDocument:
    text = decode_text(data)
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(text[:8192], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    try:
        rows = ["\t".join(cell.strip() for cell in row) for row in csv.reader(io.StringIO(text), dialect)]
    except csv.Error as error:
        raise UnreadableDocument(f"the CSV file is malformed ({_short(error)})") from error
    body = "\n".join(row for row in rows if row.strip())
    return ParsedDocument(kind="csv", sections=[Section(text=body)] if body else [])


MARKDOWN_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def read_markdown(data: bytes, limits: ParseLimits) -> ParsedDocument:
    sections: list[Section] = []
    heading, lines, fenced = "", list[str](), False
    for line in decode_text(data).splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced  # a '#' inside a code block is a comment, not a heading
        match = None if fenced else MARKDOWN_HEADING.match(line)
        if match:
            _flush(sections, "\n".join(lines), heading)
            heading, lines = match.group(2), []
        lines.append(line)
    _flush(sections, "\n".join(lines), heading)
    return ParsedDocument(kind="markdown", sections=sections)


class _HTMLText(HTMLParser):
    """Text of an HTML page by heading; script, style and the like dropped.

    The standard library's parser rather than BeautifulSoup: extracting text
    needs no tree, it tolerates broken markup, and it adds no dependency.
    """

    SKIP = frozenset({"script", "style", "noscript", "template", "svg", "head"})
    BLOCKS = frozenset({"p", "div", "br", "li", "tr", "section", "article", "pre", "blockquote", "table"})
    HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[Section] = []
        self.heading, self.skipping = "", 0
        self.parts: list[str] = []
        self.heading_parts: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.HEADINGS:
            _flush(self.sections, "".join(self.parts), self.heading)
            self.parts, self.heading_parts = [], []
        elif tag in self.BLOCKS or tag in ("td", "th"):
            self.parts.append("\n" if tag in self.BLOCKS else "\t")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.HEADINGS and self.heading_parts is not None:
            self.heading = " ".join("".join(self.heading_parts).split())
            self.parts.append(self.heading + "\n")
            self.heading_parts = None
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        (self.heading_parts if self.heading_parts is not None else self.parts).append(data)


def read_html(data: bytes, limits: ParseLimits) -> ParsedDocument:
    parser = _HTMLText()
    parser.feed(decode_text(data))
    parser.close()
    _flush(parser.sections, "".join(parser.parts), parser.heading)
    return ParsedDocument(kind="html", sections=parser.sections)


READERS: dict[Kind, Callable[[bytes, ParseLimits], ParsedDocument]] = {
    "pdf": read_pdf,
    "docx": read_docx,
    "pptx": read_pptx,
    "xlsx": read_xlsx,
    "csv": read_csv,
    "html": read_html,
    "markdown": read_markdown,
    "text": read_text,
    "code": read_code,
}


# --- Helpers -----------------------------------------------------------------------------------


def _tidy(text: str) -> str:
    """Line endings unified, spaces within lines collapsed, runs of blank lines cut to one."""
    lines = [" ".join(line.split()) for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _sections_of(text: str) -> list[Section]:
    text = _tidy(text)
    return [Section(text=text)] if text else []


def _flush(sections: list[Section], text: str, heading: str) -> None:
    text = _tidy(text)
    if text:
        sections.append(Section(text=text, heading=heading))


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):.1f}".removesuffix(".0")


def _short(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."


# --- Isolation ---------------------------------------------------------------------------------


def parse_isolated(data: bytes, filename: str, limits: ParseLimits) -> ParsedDocument:
    """`parse` in a child process bounded to `limits.max_memory_bytes` and `limits.time_limit_s`.

    'spawn', as in inference/speech_pool.py: the caller may have threads (the web
    process, a Celery worker), which a forked child would inherit mid-lock. A
    child that runs out of memory, dies or overruns is killed and its failure
    becomes an UnreadableDocument; the caller only ever sees that exception.
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(sender, data, filename, limits), daemon=True)
    child.start()
    sender.close()  # the child holds the only writing end: EOF on recv means it died
    try:
        if not receiver.poll(limits.time_limit_s):
            raise UnreadableDocument(f"parsing took longer than {limits.time_limit_s:g} s")
        try:
            status, payload = receiver.recv()
        except EOFError:
            raise UnreadableDocument(_memory_reason(limits)) from None
    finally:
        receiver.close()
        child.kill()
        child.join(5)
        child.close()
    if status == "ok":
        assert isinstance(payload, ParsedDocument)
        return payload
    if status == "memory":
        raise UnreadableDocument(_memory_reason(limits))
    raise UnreadableDocument(str(payload))


def _memory_reason(limits: ParseLimits) -> str:
    return f"parsing needed more than {limits.max_memory_bytes // (1024 * 1024)} MB"


def _child(sender: Connection, data: bytes, filename: str, limits: ParseLimits) -> None:
    try:
        import resource

        # The address space bound covers the interpreter itself, so the limit
        # must leave room for it (about 100 MB with the parsers imported).
        # macOS refuses RLIMIT_AS; there the time limit alone holds.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_AS, (limits.max_memory_bytes, limits.max_memory_bytes))
        try:
            result: tuple[str, object] = ("ok", parse(data, filename, limits))
        except UnreadableDocument as error:
            result = ("unreadable", error.reason)
        except MemoryError:
            result = ("memory", None)
        except Exception as error:  # parse wraps reader errors; this is the last net
            result = ("unreadable", f"the file could not be read ({_short(error)})")
        sender.send(result)
    except MemoryError:
        # Sending may itself need memory; if even this fails, the caller sees EOF.
        sender.send(("memory", None))
    finally:
        sender.close()
