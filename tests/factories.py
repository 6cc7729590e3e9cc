import factory
from django.contrib.auth import get_user_model

from accounts.models import Membership, Team

# Every factory-made user's password (the tests hash it with MD5: see conftest.py).
PASSWORD = "correct horse battery"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}@example.com")
    email = factory.SelfAttribute("username")
    password = factory.django.Password(PASSWORD)


class TeamFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Team

    slug = factory.Sequence(lambda n: f"team-{n}")
    name = factory.LazyAttribute(lambda o: o.slug.title())


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    team = factory.SubFactory(TeamFactory)
    role = Membership.Role.MEMBER


# --- Calls through the meter, as the proxy makes them --------------------------------


def unit_price():
    from decimal import Decimal

    from usage.pricing import Price

    return Price(input=Decimal(1), cached_input=Decimal(1), output=Decimal(1))


def tokens_costing(amount):
    """Prompt tokens that cost `amount` USD at unit_price()."""
    from decimal import Decimal

    from usage.pricing import Tokens

    return Tokens(prompt=int(Decimal(amount) * 1_000_000))


def open_call(
    team,
    key,
    request_id,
    when,
    *,
    reserve="0",
    deadline_s=600,
    model="gpt-4o",
    route="",
    end_user="",
):
    """Open a call through the meter, reserving `reserve` USD on its budgets. The call asks
    for `route` when given, else for `model`."""
    from usage.metering import CallFacts, meter_open

    facts = CallFacts(
        request_id=request_id,
        team_id=team.id,
        key_id=key.id if key else None,
        endpoint="chat",
        requested_model=route or model,
        created_at=when,
        route=route,
        end_user=end_user,
    )
    return meter_open(
        facts=facts,
        worst_case=[(unit_price(), tokens_costing(reserve))],
        deadline_s=deadline_s,
        now=when,
    )


def finish_call(meter, cost="0", *, status="ok", now=None, model="gpt-4o", provider="openai"):
    """Report one attempt of `model` costing `cost` USD and close the call."""
    from usage.metering import Outcome

    meter.attempt(
        Outcome(
            status=status,
            model=model,
            provider=provider,
            price=unit_price(),
            tokens=tokens_costing(cost),
        )
    )
    return meter.close(now=now)


def spend(team, key, amount, when, request_id, *, now=None, model="gpt-4o", route="", end_user=""):
    """A call of `amount` USD at `when` served by `model` (through `route` if given),
    reserved and settled as the proxy does it. A call back-dated past its deadline would be
    the sweeper's between its opening and its close (a live portal's heartbeat sweeps): its
    deadline reaches past the present."""
    from django.utils import timezone

    late_by = (timezone.now() - when).total_seconds()
    meter = open_call(
        team,
        key,
        request_id,
        when,
        reserve=amount,
        model=model,
        route=route,
        end_user=end_user,
        deadline_s=max(600, int(late_by) + 600),
    )
    return finish_call(meter, amount, now=now, model=model)


def global_route(name, targets, *, deadline_s=60, retries=0):
    """A global fallback route, visible to this process's catalog at once."""
    from routing.selectors import catalog_changed
    from routing.services import route_fields, route_save

    fields = route_fields(
        {"name": name, "targets": targets, "deadline_s": deadline_s, "retries": retries}
    )
    route = route_save(team=None, name=fields.pop("name"), fields=fields, actor="test")
    # On-commit hooks do not run inside a test's transaction.
    catalog_changed()
    return route


def catalog_models(*models: dict) -> None:
    """Add or change catalog models (entries as in the catalog's TOML), visible to this
    process's catalog at once."""
    from routing.selectors import catalog_changed
    from routing.services import catalog_load_data

    catalog_load_data(data={"model": list(models)})
    # On-commit hooks do not run inside a test's transaction.
    catalog_changed()
