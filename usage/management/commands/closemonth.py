from django.core.management.base import BaseCommand, CommandError

from accounts.models import Team
from accounts.selectors import team_not_found_message
from portal.progress import Progress
from usage.invoices import InvoiceError, TeamClose, invoices_close_month, month_of


class Command(BaseCommand):
    help = (
        "Build and finalize a finished month's invoices (all teams, or one). Safe to run "
        "again: goes on past a team that fails, names it, and exits non-zero; a rerun "
        "retries it."
    )

    def add_arguments(self, parser):
        parser.add_argument("month", metavar="YYYY-MM", help="the month to close, in UTC")
        parser.add_argument(
            "--team", default=None, metavar="SLUG", help="close this team only (default: all)"
        )

    def handle(self, *args, month, team, **options):
        try:
            month = month_of(month)
            target = None
            if team:
                target = Team.objects.filter(slug=team).first()
                if target is None:
                    raise CommandError(team_not_found_message(slug=team))
            self.meter = Progress(self.stdout, verbosity=options["verbosity"])
            result = invoices_close_month(month=month, team=target, progress=self.progress)
        except InvoiceError as exc:
            raise CommandError(str(exc)) from None
        self.meter.clear()

        label = f"{month:%Y-%m}"
        if not result.teams:
            self.stdout.write(f"No usage to invoice for {label}.")
            return
        new = sum(1 for t in result.teams if t.new)
        kept = len(result.invoices) - new
        empty = sum(1 for t in result.teams if t.invoice is None and not t.error)
        failures = result.failures
        self.stdout.write(
            f"{label}: {counted(len(result.teams), 'team')}, {counted(new, 'invoice')} finalized, "
            f"{kept} already final, {empty} with nothing to bill, {len(failures)} failed."
        )
        if failures:
            for failure in failures:
                self.stdout.write(f"  failed: {failure.team.slug}: {failure.error}")
            slugs = ", ".join(f.team.slug for f in failures)
            target_flag = f" --team {team}" if team else ""
            raise CommandError(
                f"{len(failures)} of {len(result.teams)} teams could not be closed for {label}: "
                f"{slugs}. Fix the cause and run `closemonth {label}{target_flag}` again; "
                f"finalized invoices stay as they are."
            )

    def progress(self, position: int, total: int, outcome: TeamClose) -> None:
        # On a terminal, one line counts the teams up and only failures stay on screen;
        # in a log, one plain line per team.
        prefix = f"[{position:>{len(str(total))}}/{total}] {outcome.team.slug:<20}"
        invoice = outcome.invoice
        if outcome.error:
            self.meter.line(f"{prefix} FAILED: {outcome.error}")
            return
        if invoice is None:
            text = f"{prefix} nothing to bill"
        else:
            note = "" if outcome.new else "  (already final)"
            text = (
                f"{prefix} {invoice.number}  USD {invoice.total_usd:>12,.2f}"
                f"  {counted(len(invoice.lines.all()), 'line')}{note}"
            )
        if self.meter.live:
            self.meter.status(text)
        else:
            self.meter.line(text)


def counted(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
