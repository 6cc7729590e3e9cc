"""Web forms of the usage pages; they validate as the API's serializers do."""

from decimal import Decimal

from django import forms
from django.core.validators import URLValidator

from usage.budgets import DEFAULT_THRESHOLDS
from usage.outbound import webhook_url_problem


class BudgetForm(forms.Form):
    amount_usd = forms.DecimalField(
        label="Monthly budget (USD)", min_value=Decimal(0), max_digits=16, decimal_places=6
    )
    hard = forms.TypedChoiceField(
        label="When it is reached",
        choices=[("1", "Refuse calls (hard)"), ("0", "Only alert (soft)")],
        coerce=lambda value: value == "1",
        initial="1",
    )
    thresholds = forms.CharField(
        label="Alert at (% of budget)",
        initial=", ".join(map(str, DEFAULT_THRESHOLDS)),
        max_length=100,
        help_text="Whole percentages, comma-separated, e.g. 50, 80, 100.",
    )

    def __init__(self, *args, keys=None, **kwargs):
        super().__init__(*args, **kwargs)
        if keys is not None:
            # A key's budget: which key, picked from the team's active keys.
            self.fields["key"] = forms.ChoiceField(
                label="Key", choices=[(k.prefix, f"{k.prefix} ({k.name})") for k in keys]
            )
            self.order_fields(["key"])

    def clean_thresholds(self) -> list[int]:
        parts = [p.strip() for p in self.cleaned_data["thresholds"].split(",") if p.strip()]
        try:
            values = sorted({int(p.rstrip("%")) for p in parts})
        except ValueError:
            raise forms.ValidationError("Give whole percentages, e.g. 50, 80, 100.") from None
        if not values or len(values) > 10 or not all(1 <= v <= 1000 for v in values):
            raise forms.ValidationError("Give one to ten percentages between 1 and 1000.")
        return values


class WebhookForm(forms.Form):
    alert_webhook_url = forms.CharField(
        label="Alert webhook URL (Slack-compatible)",
        required=False,
        max_length=500,
        validators=[URLValidator(schemes=["https", "http"])],
        help_text="Leave empty for email alerts only.",
    )

    def clean_alert_webhook_url(self) -> str:
        url = self.cleaned_data["alert_webhook_url"]
        if url and (problem := webhook_url_problem(url)):
            raise forms.ValidationError(problem)
        return url
