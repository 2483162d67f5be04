"""Parsing and chunking uploaded documents: every format built here by its own writer library,
then read back; hostile files refused with a reason a user can act on."""

from __future__ import annotations

import io
import re
import zipfile
from concurrent.futures import ThreadPoolExecutor

import docx
import openpyxl
import pptx
import pytest
from fpdf import FPDF
from pptx.util import Inches

from chat.documents import (
    ParsedDocument,
    ParseLimits,
    Section,
    UnreadableDocument,
    chunk,
    clean_filename,
    parse,
    parse_isolated,
)

LIMITS = ParseLimits()


def make_pdf(pages: list[str]) -> bytes:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    return bytes(pdf.output())


def make_docx() -> bytes:
    document = docx.Document()
    document.add_paragraph("Preface before any heading.")
    document.add_heading("Installation", level=1)
    document.add_paragraph("Run make install to set up the virtual environment.")
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Option", "Default"
    table.cell(1, 0).text, table.cell(1, 1).text = "PORT", "8000"
    document.add_heading("Usage", level=1)
    document.add_paragraph("Open the browser at the printed address.")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def make_pptx() -> bytes:
    presentation = pptx.Presentation()
    for title, body in [
        ("Quarterly results", "Revenue grew 12 percent."),
        ("Next steps", "Hire two engineers."),
    ]:
        slide = presentation.slides.add_slide(presentation.slide_layouts[1])
        slide.shapes.title.text = title
        slide.placeholders[1].text = body
    box = presentation.slides[1].shapes.add_textbox(Inches(1), Inches(5), Inches(4), Inches(1))
    box.text_frame.text = "A text box too."
    out = io.BytesIO()
    presentation.save(out)
    return out.getvalue()


def make_xlsx() -> bytes:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "Budget"
    sheet.append(["Item", "Cost"])
    sheet.append(["Servers", 1200])
    other = workbook.create_sheet("Staff")
    other.append(["Name", "Role"])
    other.append(["Ada", "Engineer"])
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def zip_with(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return out.getvalue()


# --- Each format --------------------------------------------------------------------------------


def test_pdf_text_comes_back_page_by_page() -> None:
    doc = parse(
        make_pdf(["The first page talks about apples.", "The second page is about pears."]), "f.pdf", LIMITS
    )
    assert doc.kind == "pdf" and doc.page_count == 2
    assert [s.page for s in doc.sections] == [1, 2]
    assert "apples" in doc.sections[0].text and "pears" in doc.sections[1].text


def test_docx_keeps_headings_and_tables_in_order() -> None:
    doc = parse(make_docx(), "manual.docx", LIMITS)
    assert doc.kind == "docx"
    assert [s.heading for s in doc.sections] == ["", "Installation", "Usage"]
    assert doc.sections[0].text == "Preface before any heading."
    assert "Run make install" in doc.sections[1].text and "PORT | 8000" in doc.sections[1].text
    assert doc.sections[2].text == "Usage\nOpen the browser at the printed address."


def test_pptx_gives_one_section_per_slide_with_its_title() -> None:
    doc = parse(make_pptx(), "deck.pptx", LIMITS)
    assert doc.kind == "pptx" and doc.page_count == 2
    assert [(s.page, s.heading) for s in doc.sections] == [(1, "Quarterly results"), (2, "Next steps")]
    assert "Revenue grew 12 percent." in doc.sections[0].text
    assert "Hire two engineers." in doc.sections[1].text and "A text box too." in doc.sections[1].text


def test_xlsx_gives_one_section_per_sheet() -> None:
    doc = parse(make_xlsx(), "budget.xlsx", LIMITS)
    assert doc.kind == "xlsx"
    assert [(s.heading, s.text) for s in doc.sections] == [
        ("Budget", "Item\tCost\nServers\t1200"),
        ("Staff", "Name\tRole\nAda\tEngineer"),
    ]


def test_csv_html_markdown_text_and_code() -> None:
    csv_doc = parse(b'name;city\n"Lovelace, Ada";London\n', "people.csv", LIMITS)
    assert (csv_doc.kind, csv_doc.sections[0].text) == ("csv", "name\tcity\nLovelace, Ada\tLondon")

    html = b"<html><head><title>T</title><style>p{}</style></head><body><p>Intro &amp; more</p>"
    html += b"<h2>Details</h2><p>Fine <b>print</b>.</p><script>alert(1)</script></body></html>"
    html_doc = parse(html, "page.html", LIMITS)
    assert [(s.heading, s.text) for s in html_doc.sections] == [
        ("", "Intro & more"),
        ("Details", "Details\n\nFine print."),
    ]

    md = b"# Title\nHello.\n\n```\n# not a heading\n```\n## Part two\nMore text.\n"
    md_doc = parse(md, "notes.md", LIMITS)
    assert [s.heading for s in md_doc.sections] == ["Title", "Part two"]
    assert "# not a heading" in md_doc.sections[0].text

    text_doc = parse("Caf\u00e9 in Windows-1252".encode("cp1252"), "old.txt", LIMITS)
    assert text_doc.sections == [Section(text="Caf\u00e9 in Windows-1252")]

    code_doc = parse(b"def f():\n    return 1\n", "lib.py", LIMITS)
    assert code_doc.kind == "code" and code_doc.sections[0].text == "def f():\n    return 1"


# --- Hostile input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "name", "reason"),
    [
        (b"<html>not a pdf</html>", "paper.pdf", "is not a PDF"),
        (b"plain text pretending", "report.docx", "is not one (a .docx file is a zip archive)"),
        (zip_with({"word/document.xml": b"<x/>"}), "sheet.xlsx", "a different kind of zip archive"),
        (make_docx(), "slides.pptx", "a different kind of zip archive"),
        (b"PK\x03\x04 truncated", "sheet.xlsx", "the .xlsx file is damaged"),
        (b"MZ\x90\x00\x03\x00\x00\x00" * 100, "notes.txt", "binary, not text"),
        (bytes(range(1, 32)) * 50, "notes.md", "binary, not text"),
        (b"\x81\x8d\x8f\x90\x9d", "notes.txt", "neither UTF-8 nor Windows-1252"),
        (b"hello", "program.exe", "files ending in '.exe' are not supported"),
        (b"", "empty.txt", "the file is empty"),
        (b"\n\n  \n", "blank.txt", "no text was found in this text file"),
    ],
)
def test_a_file_that_is_not_what_it_claims_is_refused(data: bytes, name: str, reason: str) -> None:
    with pytest.raises(UnreadableDocument, match=re.escape(reason)):
        parse(data, name, LIMITS)


def test_a_zip_bomb_docx_is_refused_before_it_is_unpacked() -> None:
    bomb = zip_with({"word/document.xml": b"<w/>", "word/media/big.bin": b"\0" * (64 * 1024 * 1024)})
    assert len(bomb) < 200_000  # 64 MB of zeros packs ~1000x
    with pytest.raises(UnreadableDocument, match=r"unpacks 1\d{3}x its size, like a zip bomb; at most 200x"):
        parse(bomb, "bomb.docx", LIMITS)
    with pytest.raises(UnreadableDocument, match="unpacks to 64 MB; at most 10 MB is read"):
        parse(bomb, "bomb.docx", ParseLimits(max_unpacked_bytes=10 * 1024 * 1024, max_zip_ratio=10_000))


def test_too_many_pages_is_refused() -> None:
    with pytest.raises(UnreadableDocument, match="the PDF has 4 pages; at most 3 are read"):
        parse(make_pdf(["a", "b", "c", "d"]), "long.pdf", ParseLimits(max_pages=3))
    with pytest.raises(UnreadableDocument, match="the presentation has 2 slides; at most 1 are read"):
        parse(make_pptx(), "deck.pptx", ParseLimits(max_pages=1))


def test_a_pdf_with_a_broken_xref_is_recovered_or_refused_with_a_reason() -> None:
    good = make_pdf(["Recoverable text."])
    # pypdf rebuilds a wrong xref offset by scanning for objects, as readers do.
    broken_offset = good.replace(b"startxref\n", b"startxref\n9").rsplit(b"%%EOF", 1)[0] + b"%%EOF\n"
    assert "Recoverable text." in parse(broken_offset, "f.pdf", LIMITS).sections[0].text
    # A PDF that is a header and noise cannot be rebuilt.
    with pytest.raises(UnreadableDocument, match="the PDF is damaged and cannot be read"):
        parse(b"%PDF-1.7\n" + b"garbage " * 200 + b"\nstartxref\n123456\n%%EOF\n", "f.pdf", LIMITS)


def test_a_pdf_claiming_many_pages_in_its_page_tree() -> None:
    # A /Count that lies: the reader counts the pages it finds, never the claim.
    pdf = make_pdf(["only page"])
    lying = pdf.replace(b"/Count 1", b"/Count 999999")
    assert lying != pdf
    doc = parse(lying, "f.pdf", ParseLimits(max_pages=5))
    assert doc.page_count == 1 and doc.sections == [Section(text="only page", page=1)]


def encrypted_pdf(text: str, user_password: str | None) -> bytes:
    pdf = FPDF()
    pdf.set_encryption(owner_password="owner", user_password=user_password)
    pdf.add_page()
    pdf.set_font("Helvetica")
    pdf.cell(text=text)
    return bytes(pdf.output())


def test_a_password_protected_pdf_is_refused_and_an_owner_locked_one_read() -> None:
    with pytest.raises(UnreadableDocument, match="the PDF is password-protected; upload an unlocked copy"):
        parse(encrypted_pdf("hidden", "secret"), "locked.pdf", LIMITS)
    # Only an owner password (no printing, say) still opens with an empty one.
    assert parse(encrypted_pdf("open to read", None), "x.pdf", LIMITS).sections[0].text == "open to read"


def test_too_much_text_is_refused() -> None:
    with pytest.raises(UnreadableDocument, match="holds 2,000 characters of text; at most 1,000 are read"):
        parse(b"x" * 2000, "a.txt", ParseLimits(max_chars=1000))


@pytest.mark.parametrize(
    ("name", "cleaned"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\ada\\report.pdf", "report.pdf"),
        ("re\x00po\x1b[31mrt\u202e.pdf", "repo[31mrt.pdf"),
        ("  notes.md  ", "notes.md"),
    ],
)
def test_file_names_lose_paths_and_control_characters(name: str, cleaned: str) -> None:
    assert clean_filename(name) == cleaned


def test_file_names_are_bounded_and_never_empty() -> None:
    long = clean_filename("a" * 400 + ".pdf")
    assert len(long) == 255 and long.endswith(".pdf")
    for name in ("", "../", "\x00\x01", "..", "/"):
        with pytest.raises(UnreadableDocument, match="file name is empty"):
            clean_filename(name)


# --- Isolation ----------------------------------------------------------------------------------


def test_isolated_parse_returns_the_same_document() -> None:
    data = make_docx()
    assert parse_isolated(data, "manual.docx", LIMITS) == parse(data, "manual.docx", LIMITS)


def test_isolated_parses_run_side_by_side_from_threads() -> None:
    # The Celery worker runs a pool of threads (sanjai_site/launcher.py).
    with ThreadPoolExecutor(3) as pool:
        texts = list(pool.map(lambda i: parse_isolated(f"doc {i}".encode(), "a.txt", LIMITS), range(3)))
    assert [d.sections[0].text for d in texts] == ["doc 0", "doc 1", "doc 2"]


def test_isolated_parse_passes_the_reason_through() -> None:
    with pytest.raises(UnreadableDocument, match="is not a PDF"):
        parse_isolated(b"nope", "x.pdf", LIMITS)


def test_a_parse_past_the_time_limit_is_stopped() -> None:
    # 43 MB of CSV takes about 2 s to read here, ten times the limit; the child
    # itself starts in under 0.1 s.
    big = b"name,city,notes\n" + b"Ada,London,some words here\n" * 1_600_000
    limits = ParseLimits(time_limit_s=0.2, max_chars=10**9)
    with pytest.raises(UnreadableDocument, match=r"^parsing took longer than 0\.2 s$"):
        parse_isolated(big, "big.csv", limits)
    # The caller goes on: the next isolated parse works as before.
    assert parse_isolated(b"still here", "a.txt", LIMITS).sections == [Section(text="still here")]


def test_a_parse_past_the_memory_limit_is_stopped() -> None:
    # 40 MB of words, each becoming a string object of its own while spaces are
    # tidied, needs about 700 MB.
    limits = ParseLimits(max_memory_bytes=300 * 1024 * 1024, max_chars=10**9)
    with pytest.raises(UnreadableDocument, match=r"^parsing needed more than 300 MB$"):
        parse_isolated(b"word " * (8 * 1024 * 1024), "big.txt", limits)


# --- Chunking -----------------------------------------------------------------------------------


def test_chunks_keep_page_and_heading_and_never_cross_a_page() -> None:
    sentence = "This sentence is about the page it sits on. "
    doc = ParsedDocument(
        kind="pdf",
        sections=[Section(text=sentence * 40, page=1, heading="One"), Section(text="Short page.", page=2)],
        page_count=2,
    )
    chunks = chunk(doc, target_chars=300, overlap_chars=50)
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    assert chunks[-1].text == "Short page." and chunks[-1].page == 2
    first_page = [c for c in chunks if c.page == 1]
    assert len(first_page) >= 6 and {c.heading for c in first_page} == {"One"}
    for c in first_page:
        assert len(c.text) <= 300 + 50
        assert c.text.endswith("sits on.")  # cut at a sentence end
    # Each chunk after the first opens with the end of the one before.
    assert first_page[1].text.startswith(first_page[0].text[-50:].split(" ", 1)[1])


def test_chunks_split_on_paragraphs_first() -> None:
    text = "First paragraph here.\n\nSecond paragraph here.\n\nThird paragraph here."
    doc = ParsedDocument(kind="text", sections=[Section(text=text)])
    assert [c.text for c in chunk(doc, target_chars=50, overlap_chars=0)] == [
        "First paragraph here.\n\nSecond paragraph here.",
        "Third paragraph here.",
    ]
    one_word = ParsedDocument(kind="text", sections=[Section(text="x" * 25)])
    assert [c.text for c in chunk(one_word, target_chars=10, overlap_chars=0)] == [
        "x" * 10,
        "x" * 10,
        "x" * 5,
    ]


def test_a_real_document_chunks_end_to_end() -> None:
    doc = parse(make_pdf(["Alpha. " * 300, "Beta. " * 10]), "f.pdf", LIMITS)
    chunks = chunk(doc)
    assert {c.page for c in chunks} == {1, 2}
    assert all("Beta" not in c.text for c in chunks if c.page == 1)
