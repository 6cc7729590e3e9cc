"""The invoice pages: a month's invoice line by line, its draft while it runs, voided ones."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.services import api_key_create
from tests.factories import spend
from usage.invoices import invoice_close, invoice_void
from usage.months import month_start

pytestmark = pytest.mark.django_db


@pytest.fixture
def months(team, other_team):
    """Last month closed (12.50 USD), voided and closed again; this month 3.25 so far; and
    another team's closed month with a distinctive total."""
    now = timezone.now()
    this = month_start(now)
    last = month_start(this - timedelta(days=1))
    key, _ = api_key_create(team=team, name="app")
    theirs, _ = api_key_create(team=other_team, name="theirs")
    spend(team, key, "12.5", last + timedelta(days=3), "lm1")
    spend(team, key, "3.25", max(this, now - timedelta(hours=1)), "tm1")
    spend(other_team, theirs, "77.7", last + timedelta(days=3), "g1")
    later = now + timedelta(minutes=10)
    first = invoice_close(team=team, month=last.date(), now=later)
    invoice_void(invoice=first, reason="wrong customer address", now=later)
    second = invoice_close(team=team, month=last.date(), now=later)
    foreign = invoice_close(team=other_team, month=last.date(), now=later)
    return {"this": this, "last": last, "first": first, "second": second, "foreign": foreign}


def test_a_closed_month_shows_its_lines_totals_and_the_voided_invoice(client, billing, months):
    client.force_login(billing)
    month = months["last"].strftime("%Y-%m")
    page = client.get(f"/t/acme/invoices/{month}/").content.decode()
    assert f"Invoice {months['second'].number}" in page and "$12.50" in page
    assert months["first"].number in page and "wrong customer address" in page
    assert "77.70" not in page and months["foreign"].number not in page
    listing = client.get("/t/acme/invoices/").content.decode()
    assert months["second"].number in listing and months["first"].number in listing


def test_the_month_in_progress_shows_its_draft_from_the_ledger(client, owner, months):
    client.force_login(owner)
    page = client.get(f"/t/acme/invoices/{months['this']:%Y-%m}/").content.decode()
    assert "Draft invoice" in page and "The month is in progress" in page
    assert "$3.25" in page


def test_a_voided_invoice_opens_and_downloads_by_its_number(client, owner, months):
    client.force_login(owner)
    month, number = f"{months['last']:%Y-%m}", months["first"].number
    page = client.get(f"/t/acme/invoices/{month}/?number={number}").content.decode()
    assert "Void since" in page and "wrong customer address" in page
    csv = client.get(f"/api/teams/acme/invoices/{month}/?number={number}&format=csv")
    assert csv.status_code == 200 and number in csv.content.decode()


def test_another_teams_invoice_number_is_not_found(client, owner, months):
    client.force_login(owner)
    month, number = f"{months['last']:%Y-%m}", months["foreign"].number
    assert client.get(f"/t/acme/invoices/{month}/?number={number}").status_code == 404
    api = client.get(f"/api/teams/acme/invoices/{month}/?number={number}&format=json")
    assert api.status_code == 404


@pytest.mark.parametrize("month", ["2026-13", "garbage", "0000-01", "2026-1"])
def test_an_unreadable_month_is_a_404(client, owner, month):
    client.force_login(owner)
    assert client.get(f"/t/acme/invoices/{month}/").status_code == 404


@pytest.mark.parametrize("role", ["admin", "member"])
def test_only_owners_and_billing_see_invoices(client, months, role, request):
    client.force_login(request.getfixturevalue(role))
    assert client.get(f"/t/acme/invoices/{months['last']:%Y-%m}/").status_code == 404
    assert client.get("/t/acme/invoices/").status_code == 404


def test_a_month_without_usage_has_no_invoice_page(client, owner, team):
    client.force_login(owner)
    assert client.get("/t/acme/invoices/2020-01/").status_code == 404
    assert Decimal(0) == sum(i.total_usd for i in team.invoices.all())


@pytest.mark.parametrize(
    "name",
    [
        'Evil <img src="/etc/hostname" width="40" height="40"/>',
        "Bold <b>claims</b> & <font size=40>shouting</font>",
        "Broken <para",
        "深度求索 · Кими & Co",
    ],
)
def test_a_team_name_is_printed_on_the_pdf_as_written_never_as_markup(team, name):
    import pypdfium2

    from usage.exports import invoice_pdf
    from usage.invoices import invoice_preview

    key, _ = api_key_create(team=team, name="app")
    now = timezone.now()
    spend(team, key, "1.5", now - timedelta(minutes=5), "pdf1")
    team.name = name
    team.save()
    draft = invoice_preview(
        team=team, month=month_start(now).date(), now=now + timedelta(minutes=2)
    )
    text = pypdfium2.PdfDocument(invoice_pdf(draft))[0].get_textpage().get_text_range()
    assert " ".join(name.split()) in " ".join(text.split())
