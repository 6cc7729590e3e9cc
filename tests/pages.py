"""Reading server-rendered pages in tests: tables as rows of cell text, the standing cast."""

import html as html_module
import re
from html.parser import HTMLParser


class _Tables(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th") and self.tables:
            self.cell = []
        elif self.cell is not None:
            self.cell.append(" ")  # <br>, <code>: a word boundary

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def tables(html: bytes | str) -> list[list[list[str]]]:
    """Every <table> of a page: its rows, each a list of its cells' text, whitespace folded."""
    parser = _Tables()
    parser.feed(html.decode() if isinstance(html, bytes) else html)
    return parser.tables


def row_of(table: list[list[str]], word: str) -> list[str]:
    """The one row whose first cell has `word` as one of its words."""
    matches = [row for row in table if row and word in row[0].split()]
    assert len(matches) == 1, f"{word!r} is in {len(matches)} rows"
    return matches[0]


def sign_in(client, request, who: str):
    """The test client signed in as a member of the standing cast, by fixture name, or as
    nobody for "anonymous"."""
    if who != "anonymous":
        client.force_login(request.getfixturevalue(who))
    return client


def text(page) -> str:
    """A page's text as a reader sees it: inline tags dropped, others a space; whitespace
    folded."""
    content = page.content.decode() if hasattr(page, "content") else page
    content = re.sub(r"</?(?:a|span|strong|em|code|b|i)(?:\s[^>]*)?>", "", content)
    return " ".join(html_module.unescape(re.sub(r"<[^>]+>", " ", content)).split())
