"""Reading server-rendered pages in tests: the standing cast, tables as rows of cell text,
and the accessibility every page keeps."""

import html as html_module
import re
from html.parser import HTMLParser

# Who may open the pages of the accounts room (owners and admins: KEY_MANAGERS and
# PEOPLE_MANAGERS), and what everybody else gets: 404, as if the team did not exist.
ALLOWED = ("owner", "admin")
REFUSED = ("billing", "member", "outsider")
CAST = (*ALLOWED, *REFUSED, "anonymous")


def sign_in_as(request, client, who: str):
    """Sign the test client in as one of the standing cast (or nobody: "anonymous")."""
    if who == "anonymous":
        return None
    user = request.getfixturevalue(who)
    client.force_login(user)
    return user


def expected_status(who: str) -> int:
    return 200 if who in ALLOWED else 302 if who == "anonymous" else 404


class _Outline(HTMLParser):
    """Records, for each table, the classes of its ancestors and the attributes of its
    header cells; for each element with an id, its text."""

    VOID = {"input", "br", "img", "meta", "link", "hr", "col", "source", "wbr"}

    def __init__(self):
        super().__init__()
        self.stack: list[tuple[str, dict]] = []
        self.tables: list[dict] = []
        self.texts: dict[str, str] = {}
        self.labels_for: set[str] = set()
        self.inputs: list[dict] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            classes = [a.get("class", "") for _, a in self.stack]
            self.tables.append({"ancestor_classes": classes, "headers": []})
        if tag == "th" and self.tables:
            self.tables[-1]["headers"].append(attrs)
        if tag == "label":
            if attrs.get("for"):
                self.labels_for.add(attrs["for"])
        if tag in ("input", "select", "textarea") and attrs.get("type") not in ("hidden", "submit"):
            attrs["wrapped_by_label"] = any(t == "label" for t, _ in self.stack)
            self.inputs.append(attrs)
        if tag not in self.VOID:
            self.stack.append((tag, attrs))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break

    def handle_data(self, data):
        for _, attrs in self.stack:
            if attrs.get("id"):
                self.texts[attrs["id"]] = self.texts.get(attrs["id"], "") + data


def outline(html: str) -> _Outline:
    parser = _Outline()
    parser.feed(html)
    return parser


def assert_accessible(html: str):
    """Every table scrolls inside `.scroll` and has column headers with scope="col"; every
    input, select and textarea has a label."""
    page = outline(html)
    for table in page.tables:
        assert any("scroll" in c.split() for c in table["ancestor_classes"]), table
        assert table["headers"] and all(h.get("scope") in ("col", "row") for h in table["headers"])
    for field in page.inputs:
        assert field["wrapped_by_label"] or field.get("id") in page.labels_for, field


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
    sign_in_as(request, client, who)
    return client


def text(page) -> str:
    """A page's text as a reader sees it: inline tags dropped, others a space; whitespace
    folded."""
    content = page.content.decode() if hasattr(page, "content") else page
    content = re.sub(r"</?(?:a|span|strong|em|code|b|i)(?:\s[^>]*)?>", "", content)
    return " ".join(html_module.unescape(re.sub(r"<[^>]+>", " ", content)).split())
