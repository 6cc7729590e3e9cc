"""One team cannot take the hot path's database connections from the others: each team's
statements hold at most half of the pool (portal.aio)."""

import asyncio
import threading
from decimal import Decimal

import openai
import pytest
from django.db import connections, transaction

from accounts.services import api_key_create
from usage.budgets import budget_set
from usage.models import BudgetCounter

pytestmark = pytest.mark.django_db(transaction=True)
MESSAGES = [{"role": "user", "content": "hi"}]


def test_a_team_whose_budget_row_is_locked_does_not_stop_other_teams(
    catalog, team, other_team, live_portal
):
    budget_set(team=team, amount_usd=Decimal("100"))
    budget_set(team=other_team, amount_usd=Decimal("100"))
    _, locked_secret = api_key_create(team=team, name="locked")
    _, free_secret = api_key_create(team=other_team, name="free")
    held, release = threading.Event(), threading.Event()

    def hold_the_counter():
        # A long transaction holding the team's budget counter (a report, a manual fix).
        try:
            with transaction.atomic():
                list(BudgetCounter.objects.select_for_update().filter(budget__team=team))
                held.set()
                release.wait(10)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold_the_counter)
    holder.start()
    assert held.wait(10)

    async def calls():
        def client(secret):
            return openai.AsyncOpenAI(
                base_url=f"{live_portal.url}/v1", api_key=secret, max_retries=0, timeout=30
            )

        async def one(secret):
            try:
                await client(secret).chat.completions.create(
                    model="deepseek-v4-flash", messages=MESSAGES
                )
                return 200
            except openai.APIStatusError as exc:
                return exc.status_code

        locked = [asyncio.ensure_future(one(locked_secret)) for _ in range(30)]
        await asyncio.sleep(0.5)  # the locked team's calls have taken what they may
        free = await asyncio.gather(*(one(free_secret) for _ in range(5)))
        release.set()
        return free, await asyncio.gather(*locked)

    try:
        free, locked = asyncio.run(calls())
    finally:
        release.set()
        holder.join()

    assert free == [200] * 5
    # The locked team's calls waited; those past its share got a 503 after the pool wait,
    # the rest were served once the lock was gone. None was lost.
    assert set(locked) <= {200, 503} and 200 in locked
