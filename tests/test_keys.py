"""API keys: recognisable prefixes, keyed hashes only, secrets never stored or logged."""

import hashlib
import hmac
import logging

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from accounts.models import ApiKey
from accounts.services import (
    InvalidKey,
    api_key_authenticate,
    api_key_create,
    api_key_revoke,
    key_hash,
)

pytestmark = pytest.mark.django_db


def test_key_has_a_readable_prefix_and_only_its_keyed_hash_is_stored(team, settings):
    key, secret = api_key_create(team=team, name="app")

    assert (
        secret.startswith(key.prefix + "_") and key.prefix.startswith("tgk_") and len(secret) > 50
    )
    assert key.secret_hash == key_hash(secret) != secret
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM accounts_apikey")
        stored = " ".join(str(v) for row in cursor.fetchall() for v in row)
    assert secret not in stored and secret[len(key.prefix) + 1 :] not in stored


def test_without_a_pepper_the_hash_is_keyed_by_the_secret_key(team, settings):
    settings.TOLLGATE_KEY_PEPPER = ""
    key, secret = api_key_create(team=team, name="app")
    settings.SECRET_KEY = "another-secret-key-entirely-0123456789"
    with pytest.raises(InvalidKey):
        api_key_authenticate(secret=secret)


# --- The key pepper: rotating it, or SECRET_KEY, without breaking keys ---------------------

PEPPER_A = "pepper-a-0123456789abcdef0123456789abcdef"
PEPPER_B = "pepper-b-0123456789abcdef0123456789abcdef"


def stored_hash(key):
    return ApiKey.objects.get(id=key.id).secret_hash


def test_key_issued_before_the_pepper_existed_keeps_working(team, settings):
    # Before the upgrade a key's hash was HMAC-SHA256 keyed by SECRET_KEY, computed here by
    # hand so the test does not depend on the code it checks.
    settings.TOLLGATE_KEY_PEPPER, settings.TOLLGATE_KEY_PEPPER_FALLBACKS = "", []
    key, secret = api_key_create(team=team, name="app")
    old_hash = hmac.new(settings.SECRET_KEY.encode(), secret.encode(), hashlib.sha256).hexdigest()
    ApiKey.objects.filter(id=key.id).update(secret_hash=old_hash)

    assert api_key_authenticate(secret=secret).key_id == key.id
    assert stored_hash(key) == old_hash

    # The operator then sets a pepper, with the SECRET_KEY as the pepper it replaces.
    settings.TOLLGATE_KEY_PEPPER = PEPPER_A
    settings.TOLLGATE_KEY_PEPPER_FALLBACKS = [settings.SECRET_KEY]
    settings.TOLLGATE_KEY_PEPPER_REHASH = True
    assert api_key_authenticate(secret=secret).key_id == key.id
    assert stored_hash(key) == key_hash(secret, pepper=PEPPER_A)


def test_key_survives_rotating_the_pepper_and_is_rehashed_on_use(team, settings):
    settings.TOLLGATE_KEY_PEPPER = PEPPER_A
    key, secret = api_key_create(team=team, name="app")
    api_key_authenticate(secret=secret)  # cached with its hash under A
    assert stored_hash(key) == key_hash(secret, pepper=PEPPER_A)

    settings.TOLLGATE_KEY_PEPPER = PEPPER_B
    settings.TOLLGATE_KEY_PEPPER_FALLBACKS = [PEPPER_A]
    assert api_key_authenticate(secret=secret).key_id == key.id
    # During the rollout the stored hash stays under A: a process still on A accepts it.
    assert stored_hash(key) == key_hash(secret, pepper=PEPPER_A)

    settings.TOLLGATE_KEY_PEPPER_REHASH = True  # every process runs B now
    assert api_key_authenticate(secret=secret).key_id == key.id
    assert stored_hash(key) == key_hash(secret, pepper=PEPPER_B)

    settings.TOLLGATE_KEY_PEPPER_FALLBACKS = []
    assert api_key_authenticate(secret=secret).key_id == key.id


def test_key_not_used_before_its_pepper_is_dropped_is_rejected(team, settings):
    settings.TOLLGATE_KEY_PEPPER = PEPPER_A
    key, secret = api_key_create(team=team, name="app")
    api_key_authenticate(secret=secret)  # cached: the cache must not keep it alive

    settings.TOLLGATE_KEY_PEPPER = PEPPER_B
    with pytest.raises(InvalidKey, match="Incorrect API key"):
        api_key_authenticate(secret=secret)
    assert stored_hash(key) == key_hash(secret, pepper=PEPPER_A)


def test_changing_the_secret_key_keeps_keys_when_a_pepper_is_set(team, settings):
    settings.TOLLGATE_KEY_PEPPER = PEPPER_A
    key, secret = api_key_create(team=team, name="app")

    settings.SECRET_KEY = "another-secret-key-entirely-0123456789"

    assert api_key_authenticate(secret=secret).key_id == key.id


def test_key_revoked_after_a_rehash_is_rejected(team, settings):
    settings.TOLLGATE_KEY_PEPPER = PEPPER_A
    key, secret = api_key_create(team=team, name="app")
    api_key_authenticate(secret=secret)
    settings.TOLLGATE_KEY_PEPPER, settings.TOLLGATE_KEY_PEPPER_FALLBACKS = PEPPER_B, [PEPPER_A]
    settings.TOLLGATE_KEY_PEPPER_REHASH = True
    api_key_authenticate(secret=secret)  # re-hashed under B

    call_command("revokekey", key.prefix)

    with pytest.raises(InvalidKey, match="revoked"):
        api_key_authenticate(secret=secret)


def test_a_fallback_pepper_does_not_accept_a_wrong_secret(team, settings):
    settings.TOLLGATE_KEY_PEPPER, settings.TOLLGATE_KEY_PEPPER_FALLBACKS = PEPPER_B, [PEPPER_A]
    key, secret = api_key_create(team=team, name="app")
    with pytest.raises(InvalidKey):
        api_key_authenticate(secret=secret[:-3] + "xyz")
    assert stored_hash(key) == key_hash(secret, pepper=PEPPER_B)


def test_start_up_warns_once_when_production_runs_without_a_pepper(settings, caplog):
    from django.apps import apps

    settings.DEBUG, settings.TOLLGATE_KEY_PEPPER = False, ""
    apps.get_app_config("accounts").ready()
    assert "TOLLGATE_KEY_PEPPER is not set" in caplog.text

    caplog.clear()
    settings.TOLLGATE_KEY_PEPPER = PEPPER_A
    apps.get_app_config("accounts").ready()
    assert "TOLLGATE_KEY_PEPPER" not in caplog.text


def test_management_keys_have_their_own_prefix(team):
    key, secret = api_key_create(team=team, name="ops", kind=ApiKey.Kind.MANAGEMENT)
    assert (
        key.prefix.startswith("tgm_") and api_key_authenticate(secret=secret).kind == "management"
    )


def test_no_secret_reaches_the_logs_of_a_proxied_call(caplog, team):
    from django.test import Client

    _, secret = api_key_create(team=team, name="app")
    caplog.set_level(logging.DEBUG)

    Client().get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {secret}")
    Client().get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {secret[:-3]}xyz")

    assert secret not in caplog.text and secret[-20:] not in caplog.text


def test_issuekey_prints_the_secret_alone_on_the_last_line(team, catalog, capsys):
    call_command(
        "issuekey", "acme", "--name", "worker", "--models", "gpt-4o,bulk_classify", "--rpm", "60"
    )

    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    principal = api_key_authenticate(secret=last_line)
    key = ApiKey.objects.get(id=principal.key_id)
    assert (key.name, key.allowed_models, key.rpm_limit) == (
        "worker",
        ["bulk_classify", "gpt-4o"],
        60,
    )


def test_revokekey_by_prefix(team):
    key, secret = api_key_create(team=team, name="app")
    api_key_authenticate(secret=secret)

    call_command("revokekey", key.prefix)

    with pytest.raises(InvalidKey, match="revoked"):
        api_key_authenticate(secret=secret)


def test_createteam_creates_the_owner(db):
    from accounts.models import Membership, Team

    call_command(
        "createteam",
        "initech",
        "--name",
        "Initech",
        "--owner",
        "boss@initech.test",
        "--markup",
        "7.5",
    )

    team = Team.objects.get(slug="initech")
    assert str(team.markup_percent) == "7.500"
    assert Membership.objects.get(team=team).role == "owner"


def test_issuekey_refuses_a_model_the_catalog_does_not_have(team, catalog):
    with pytest.raises(CommandError, match="not a model or route in the catalog: gtp-4o"):
        call_command("issuekey", "acme", "--name", "typo", "--models", "gpt-4o,gtp-4o")
    assert not ApiKey.objects.filter(name="typo").exists()


@pytest.mark.django_db(transaction=True)
def test_a_key_revoked_in_one_process_stops_working_in_every_process_within_2_s(
    catalog, team, live_portal, second_portal
):
    """Each process keeps the keys it met for TOLLGATE_KEY_LOCAL_CACHE_S (2 s) to skip a
    round trip; a revocation made elsewhere reaches it within that bound."""
    import time

    import httpx2

    from accounts.services import api_key_create, api_key_revoke

    key, secret = api_key_create(team=team, name="app")
    headers = {"Authorization": f"Bearer {secret}"}
    for url in (live_portal.url, second_portal):  # both processes now hold the key
        assert httpx2.get(f"{url}/v1/models", headers=headers).status_code == 200
    revoked_at = time.monotonic()
    api_key_revoke(key=key)  # in this process (which serves live_portal)
    assert httpx2.get(f"{live_portal.url}/v1/models", headers=headers).status_code == 401
    while httpx2.get(f"{second_portal}/v1/models", headers=headers).status_code != 401:
        assert time.monotonic() - revoked_at < 2.5, "the other process still takes the key"
        time.sleep(0.1)


def test_a_call_that_read_the_key_before_its_revocation_cannot_cache_it_after(team):
    # The race: a process reads the key from the database (valid), the key is revoked and
    # its cache entry cleared, then that process writes what it read. Its write (SET NX)
    # meets the revocation's marker and is dropped, so no process can accept the key again.
    from accounts import services

    key, secret = api_key_create(team=team, name="app")
    prefix = secret[: services.PREFIX_LEN]
    read_before = services._principal_of_row(services._principal_query(prefix).first())

    api_key_revoke(key=key)
    services._sync_redis().set(
        services._shared_key(prefix), services._principal_dumps(read_before), ex=60, nx=True
    )
    services._local_principals.clear()  # another process

    with pytest.raises(InvalidKey, match="revoked"):
        api_key_authenticate(secret=secret)


def test_a_key_edited_anywhere_is_read_afresh_by_every_process(team):
    from accounts import services

    key, secret = api_key_create(team=team, name="app", rpm_limit=10)
    assert api_key_authenticate(secret=secret).rpm_limit == 10  # cached in Redis

    key.rpm_limit = 3
    key.save(update_fields=["rpm_limit"])  # as the admin site saves it
    services._local_principals.clear()  # another process

    assert api_key_authenticate(secret=secret).rpm_limit == 3
