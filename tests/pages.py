"""Helpers for testing the web UI's team pages against the standing cast."""

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
