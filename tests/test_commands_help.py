"""Every Tollgate management command explains itself: `--help` describes the command and
every argument, so an operator never has to read the source to run one."""

import pytest
from django.core.management import get_commands, load_command_class

OURS = {"accounts", "routing", "usage"}
# Options every Django command has, documented by Django itself.
DJANGO_OPTIONS = {
    "help",
    "version",
    "verbosity",
    "settings",
    "pythonpath",
    "traceback",
    "no_color",
    "force_color",
    "skip_checks",
}
COMMANDS = sorted(name for name, app in get_commands().items() if app in OURS)


def test_the_contracts_commands_are_all_checked():
    assert {
        "loadcatalog",
        "createteam",
        "issuekey",
        "revokekey",
        "setbudget",
        "closemonth",
        "exportinvoice",
        "reconcile",
    } <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_describes_the_command_and_every_argument(name, capsys):
    command = load_command_class(get_commands()[name], name)

    with pytest.raises(SystemExit) as exited:
        command.run_from_argv(["manage.py", name, "--help"])  # as `manage.py NAME --help`

    text = " ".join(capsys.readouterr().out.split())
    assert exited.value.code == 0
    assert len(command.help) > 20 and " ".join(command.help.split()) in text
    parser = command.create_parser("manage.py", name)
    undocumented = [
        action.dest
        for action in parser._actions
        if action.dest not in DJANGO_OPTIONS and not (action.help or "").strip()
    ]
    assert undocumented == [], f"{name}: arguments without help: {undocumented}"


# --- Errors name the fix -----------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "argv",
    [
        ["issuekey", "acmee", "--name", "app"],
        ["setbudget", "acmee", "100"],
        ["closemonth", "2026-01", "--team", "acmee"],
        ["exportinvoice", "acmee", "2026-01", "--format", "csv", "--output", "/dev/null"],
        ["exportusage", "2026-01", "--team", "acmee"],
    ],
)
def test_an_unknown_team_is_answered_with_the_teams_there_are(argv, team):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    with pytest.raises(CommandError) as failed:
        call_command(*argv)

    assert str(failed.value) == (
        "No team 'acmee'. Teams: acme. Or `manage.py createteam SLUG --name NAME` creates one."
    )


@pytest.mark.django_db
def test_with_no_teams_the_error_says_how_to_create_one():
    from accounts.selectors import team_not_found_message

    assert team_not_found_message(slug="acme") == (
        "No team 'acme': there are no teams yet; `manage.py createteam SLUG --name NAME`"
        " creates one."
    )


@pytest.mark.django_db
def test_a_long_team_list_is_cut_short_and_points_at_the_admin(team):
    from accounts.selectors import team_not_found_message
    from tests.factories import TeamFactory

    for n in range(12):
        TeamFactory(slug=f"team-{n:02}")

    message = team_not_found_message(slug="nope")

    assert "acme, team-00," in message and "team-08, …" in message and "team-09" not in message
    assert "/admin/accounts/team/" in message
