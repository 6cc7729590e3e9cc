"""An invoice as CSV, JSON (the API's shape) and PDF (reportlab)."""

import csv
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from itertools import groupby
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from usage.models import Invoice

CSV_COLUMNS = [
    "invoice",
    "month",
    "position",
    "kind",
    "description",
    "usage_month",
    "model",
    "endpoint",
    "requests",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "input_per_mtok",
    "cached_input_per_mtok",
    "output_per_mtok",
    "amount_usd",
]


def _plain(value):
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return f"{value.normalize():f}"
    return str(value)


def invoice_json(invoice: Invoice) -> dict:
    return {
        "number": invoice.number,
        "status": invoice.status,
        "month": f"{invoice.month:%Y-%m}",
        "currency": invoice.currency,
        "seller": invoice.seller,
        "customer": invoice.customer,
        "markup_percent": str(invoice.markup_percent),
        "lines": [
            {
                "position": line.position,
                "kind": line.kind,
                "description": line.description,
                "usage_month": f"{line.usage_month:%Y-%m}" if line.usage_month else None,
                "model": line.model,
                "endpoint": line.endpoint,
                "requests": line.requests,
                "prompt_tokens": line.prompt_tokens,
                "cached_tokens": line.cached_tokens,
                "completion_tokens": line.completion_tokens,
                "input_per_mtok": _plain(line.input_per_mtok) or None,
                "cached_input_per_mtok": _plain(line.cached_input_per_mtok) or None,
                "output_per_mtok": _plain(line.output_per_mtok) or None,
                "amount_usd": str(line.amount_usd),
            }
            for line in invoice.lines.all()
        ],
        "subtotal_usd": str(invoice.subtotal_usd),
        "total_usd": str(invoice.total_usd),
        "finalized_at": invoice.finalized_at.isoformat() if invoice.finalized_at else None,
        "voided_at": invoice.voided_at.isoformat() if invoice.voided_at else None,
        "replaces": invoice.replaces.number if invoice.replaces_id else None,
    }


def invoice_csv(invoice: Invoice) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for line in invoice.lines.all():
        writer.writerow(
            [
                invoice.number or "draft",
                f"{invoice.month:%Y-%m}",
                line.position,
                line.kind,
                line.description,
                f"{line.usage_month:%Y-%m}" if line.usage_month else "",
                line.model,
                line.endpoint,
                line.requests,
                line.prompt_tokens,
                line.cached_tokens,
                line.completion_tokens,
                _plain(line.input_per_mtok),
                _plain(line.cached_input_per_mtok),
                _plain(line.output_per_mtok),
                str(line.amount_usd),
            ]
        )
    return out.getvalue()


# Helvetica prints only Windows-1252's characters. Text beyond them (a Chinese or Russian
# team name, an adjustment's reason) is set in reportlab's built-in CID font for Chinese,
# which covers CJK, Cyrillic and Greek and which PDF readers supply: no font file needed.
CID_FONT = "STSong-Light"
pdfmetrics.registerFont(UnicodeCIDFont(CID_FONT))


def _beyond_helvetica(character: str) -> bool:
    try:
        character.encode("cp1252")
    except UnicodeEncodeError:
        return True
    return False


def _printed(text: str) -> str:
    """Text as reportlab markup printing it as written: escaped (a name is never markup),
    each run Helvetica cannot print set in the CID font."""
    runs = []
    for beyond, run in groupby(text, key=_beyond_helvetica):
        chunk = escape("".join(run))
        runs.append(f'<font name="{CID_FONT}">{chunk}</font>' if beyond else chunk)
    return "".join(runs)


def invoice_pdf(invoice: Invoice) -> bytes:
    styles = getSampleStyleSheet()
    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=18 * mm,
        rightMargin=18 * mm,
        topMargin=18 * mm,
        bottomMargin=18 * mm,
        title=f"Invoice {invoice.number or 'draft'}",
    )
    seller, customer = invoice.seller, invoice.customer
    title = f"Invoice {invoice.number}" if invoice.number else "Draft invoice (not final)"
    if invoice.status == Invoice.Status.VOID:
        title += " — VOID"
    story = [
        Paragraph(title, styles["Title"]),
        Table(
            [
                [
                    Paragraph(
                        "<br/>".join(
                            [
                                "<b>From</b>",
                                *[
                                    part
                                    for part in (
                                        _printed(seller.get("name") or ""),
                                        _printed(seller.get("address") or ""),
                                        _printed(seller.get("email") or ""),
                                        f"Tax ID {_printed(seller['tax_id'])}"
                                        if seller.get("tax_id")
                                        else "",
                                    )
                                    if part
                                ],
                            ]
                        ),
                        styles["Normal"],
                    ),
                    Paragraph(
                        # Names are text, not reportlab markup: escaped, so a team called
                        # "<img src=…>" prints as written instead of loading a file.
                        f"<b>Bill to</b><br/>{_printed(customer.get('name', ''))}"
                        f"<br/>Account {_printed(customer.get('account', ''))}",
                        styles["Normal"],
                    ),
                    Paragraph(
                        f"<b>Period</b><br/>{invoice.month:%B %Y} (UTC)<br/><b>Issued</b><br/>"
                        f"{invoice.finalized_at:%Y-%m-%d}"
                        if invoice.finalized_at
                        else f"<b>Period</b><br/>{invoice.month:%B %Y} (UTC)",
                        styles["Normal"],
                    ),
                ],
            ],
            colWidths=[60 * mm, 60 * mm, 54 * mm],
            style=[("VALIGN", (0, 0), (-1, -1), "TOP")],
        ),
        Spacer(1, 8 * mm),
    ]
    cell = styles["BodyText"].clone("cell", fontSize=8.5, leading=10)
    rows = [
        ["Description", "Requests", "Input tok", "Output tok", "USD / 1M in · out", "Amount (USD)"]
    ]
    lines = list(invoice.lines.all())
    usage = [line for line in lines if line.kind in ("usage", "late_usage")]
    for line in usage + [None] + [line for line in lines if line not in usage]:
        if line is None:
            rows.append(["Subtotal (usage)", "", "", "", "", f"{invoice.subtotal_usd:,.2f}"])
            continue
        unit = ""
        if line.input_per_mtok is not None or line.output_per_mtok is not None:
            unit = f"{_plain(line.input_per_mtok) or '–'} · {_plain(line.output_per_mtok) or '–'}"
        rows.append(
            [
                Paragraph(_printed(line.description), cell),
                f"{line.requests:,}" if line.kind in ("usage", "late_usage") else "",
                f"{line.prompt_tokens:,}" if line.kind in ("usage", "late_usage") else "",
                f"{line.completion_tokens:,}" if line.kind in ("usage", "late_usage") else "",
                unit,
                f"{line.amount_usd:,.2f}",
            ]
        )
    rows.append([f"Total ({invoice.currency})", "", "", "", "", f"{invoice.total_usd:,.2f}"])
    subtotal_row = len(usage) + 1
    table = Table(
        rows, colWidths=[62 * mm, 20 * mm, 22 * mm, 22 * mm, 26 * mm, 22 * mm], repeatRows=1
    )
    table.setStyle(
        TableStyle(
            [
                ("FONT", (0, 0), (-1, 0), "Helvetica-Bold"),
                ("FONTSIZE", (0, 0), (-1, -1), 8.5),
                ("LINEBELOW", (0, 0), (-1, 0), 0.6, colors.black),
                ("ALIGN", (1, 1), (-1, -1), "RIGHT"),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LINEABOVE", (0, subtotal_row), (-1, subtotal_row), 0.4, colors.grey),
                ("FONT", (0, -1), (-1, -1), "Helvetica-Bold"),
                ("LINEABOVE", (0, -1), (-1, -1), 0.8, colors.black),
            ]
        )
    )
    story += [
        table,
        Spacer(1, 6 * mm),
        Paragraph(
            "Amounts are summed exactly from the usage ledger and rounded half-up to cents once per line; "
            "the total is the sum of the rounded lines.",
            styles["Italic"],
        ),
    ]
    doc.build(story)
    return buffer.getvalue()


# --- The ledger, row by row, for spreadsheets and other systems ----------------------------


def ledger_cell(value):
    """A ledger value as text: Decimals as plain digits (never 0E-12), moments in ISO 8601,
    as the API writes them; text that starts like a spreadsheet formula with an apostrophe."""
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, str) and (
        value[:1] in FORMULA_STARTS or value.lstrip()[:1] in FORMULA_STARTS
    ):
        # Text a key holder chose (end user, model asked for, an upstream's error): a
        # spreadsheet must read it as text, never run it as a formula (OWASP's advice).
        return "'" + value
    return value


FORMULA_STARTS = ("=", "+", "-", "@", "|", "\t", "\r")
# Lines are handed on in chunks of about this many characters.
CHUNK = 64 * 1024


# A ledger row as other systems get it (exportusage, the usage webhook's events): the name
# each field goes by, and where it comes from. Money as decimal strings.
LEDGER_FIELDS = {
    "team": "team__slug",
    "request_id": "request_id",
    "attempt": "attempt",
    "created_at": "created_at",
    "recorded_at": "recorded_at",
    "key": "api_key__prefix",
    "endpoint": "endpoint",
    "requested_model": "requested_model",
    "route": "route",
    "model": "model",
    "provider": "provider",
    "status": "status",
    "http_status": "http_status",
    "prompt_tokens": "prompt_tokens",
    "cached_tokens": "cached_tokens",
    "completion_tokens": "completion_tokens",
    "reasoning_tokens": "reasoning_tokens",
    "tokens_estimated": "tokens_estimated",
    "input_per_mtok": "input_per_mtok",
    "cached_input_per_mtok": "cached_input_per_mtok",
    "output_per_mtok": "output_per_mtok",
    "cost_usd": "cost_usd",
    "streamed": "streamed",
    "latency_ms": "latency_ms",
    "ttft_ms": "ttft_ms",
    "end_user": "end_user",
}


def ledger_csv_lines(rows: Iterable[Sequence], fields: Sequence[str]) -> Iterator[str]:
    """CSV text of ledger rows (tuples in `fields` order), a header first, in chunks."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(fields)
    for row in rows:
        writer.writerow([ledger_cell(value) for value in row])
        if buffer.tell() > CHUNK:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def ledger_ndjson_lines(rows: Iterable[Sequence], fields: Sequence[str]) -> Iterator[str]:
    """Newline-delimited JSON of ledger rows: one object per row, money as decimal strings,
    nothing escaped for spreadsheets (a program reads this)."""
    chunk: list[str] = []
    size = 0
    for row in rows:
        line = json.dumps(
            {
                name: f"{value:f}"
                if isinstance(value, Decimal)
                else value.isoformat().replace("+00:00", "Z")
                if isinstance(value, datetime)
                else value
                for name, value in zip(fields, row, strict=True)
            },
            ensure_ascii=False,
        )
        chunk.append(line + "\n")
        size += len(line) + 1
        if size > CHUNK:
            yield "".join(chunk)
            chunk, size = [], 0
    yield "".join(chunk)
