"""Web forms for routes and compare runs.

A route form checks what a form can (a model picked from the catalog, whole
numbers, a weight per target) with sentences beside the fields, then hands
the route to route_fields, the same check the API and the catalog file go
through; route_save has the last word when the view saves.
"""

import re

from django import forms
from django.conf import settings

from routing.models import CatalogModel, Route
from routing.selectors import ModelInfo
from routing.services import CatalogError, route_fields
from routing.templatetags.routing_format import benchmark_label, usd_exact
from usage.pricing import unpriced_direction

# Target pickers shown for a new route; an edited one gets two more than it has.
TARGET_SLOTS = 6
# More pickers than anyone needs: a posted form cannot make the server build thousands.
MAX_TARGET_SLOTS = 50
STRATEGY_HELP = (
    "Fallback: the first target that answers. Weighted: shared by weight. "
    "Cheapest / fastest: the target expected to cost least or answer soonest "
    "that meets the floors below."
)


def _sentence(problem: str) -> str:
    text = problem[:1].upper() + problem[1:]
    return text if text.endswith((".", "?", "!")) else f"{text}."


def model_label(model: ModelInfo) -> str:
    name = model.display_name
    label = name if name == model.name else f"{name} ({model.name})"
    needs_output = model.can("chat")
    missing = unpriced_direction(model.prices, needs_output=needs_output)
    return f"{label}, unpriced {missing}" if missing else label


class RouteForm(forms.Form):
    name = forms.CharField(
        max_length=100,
        label="Route name",
        help_text=(
            "What clients send as “model”. A route with a global route's name overrides it "
            "for this team only; a model's id cannot be a route name."
        ),
    )
    strategy = forms.ChoiceField(
        choices=Route.Strategy.choices, initial=Route.Strategy.FALLBACK, help_text=STRATEGY_HELP
    )
    capabilities = forms.MultipleChoiceField(
        choices=CatalogModel.Capability.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Targets must have these capabilities",
    )
    retries = forms.IntegerField(
        min_value=0,
        max_value=5,
        initial=1,
        label="Retries",
        help_text="Extra passes over the targets once each has failed.",
    )

    def __init__(
        self,
        data=None,
        *,
        models: list[ModelInfo],
        benchmarks: list[str],
        route: Route | None = None,
        named: bool = True,
    ):
        """`route` fills the form (editing it, or overriding a global one); `named=False`
        drops the name field, for an edit, where the name is the page's."""
        initial = _initial(route) if route is not None else {}
        super().__init__(data, initial=initial)
        self.route_name = None
        if not named:
            del self.fields["name"]
            self.route_name = route.name if route else None
        longest = settings.TOLLGATE_CALL_DEADLINE_S
        self.fields["deadline_s"] = forms.IntegerField(
            min_value=1,
            max_value=longest,
            initial=60,
            label="Deadline (seconds)",
            help_text=f"How long all attempts of a call together may take, up to {longest}.",
        )
        choices = [("", "(none)")] + [(m.name, model_label(m)) for m in models]
        self.slots = self._slots(data, route)
        for i in range(1, self.slots + 1):
            self.fields[f"target_{i}"] = forms.ChoiceField(
                choices=choices,
                required=False,
                label=f"Target {i}",
                error_messages={
                    "invalid_choice": "“%(value)s” is not a model in the catalog; "
                    "pick one from the list."
                },
            )
            self.fields[f"weight_{i}"] = forms.IntegerField(
                min_value=0, required=False, label=f"Weight of target {i}"
            )
        # Existing floors on benchmarks the catalog no longer scores stay editable.
        floors = list(dict.fromkeys([*benchmarks, *(route.require if route else {})]))
        self.benchmarks = floors
        for name in floors:
            self.fields[f"floor_{name}"] = forms.FloatField(
                required=False, label=f"Lowest {benchmark_label(name)} score"
            )

    @staticmethod
    def _slots(data, route) -> int:
        posted = [int(m[1]) for k in (data or {}) if (m := re.fullmatch(r"target_(\d+)", k))]
        wanted = max([TARGET_SLOTS, len(route.targets) + 2 if route else 0, *posted])
        return min(wanted, MAX_TARGET_SLOTS)

    def target_rows(self):
        """(target, weight) bound fields, for the template."""
        return [(self[f"target_{i}"], self[f"weight_{i}"]) for i in range(1, self.slots + 1)]

    def floor_fields(self):
        return [self[f"floor_{name}"] for name in self.benchmarks]

    def clean(self):
        data = super().clean()
        picked = [
            (i, data[f"target_{i}"]) for i in range(1, self.slots + 1) if data.get(f"target_{i}")
        ]
        if not picked and not self.has_error("target_1"):
            self.add_error("target_1", "Pick at least one target model.")
        weighted = data.get("strategy") == Route.Strategy.WEIGHTED
        if weighted:
            for i, _ in picked:
                if data.get(f"weight_{i}") is None and not self.has_error(f"weight_{i}"):
                    self.add_error(
                        f"weight_{i}", "A weighted route needs a weight for each target."
                    )
        if self.errors:
            return data
        entry = {
            "name": data.get("name") or self.route_name,
            "strategy": data["strategy"],
            "targets": [target for _, target in picked],
            "weights": [data[f"weight_{i}"] for i, _ in picked] if weighted else [],
            "require": {
                name: data[f"floor_{name}"]
                for name in self.benchmarks
                if data.get(f"floor_{name}") is not None
            },
            "capabilities": data.get("capabilities", []),
            "deadline_s": data["deadline_s"],
            "retries": data["retries"],
        }
        try:
            fields = route_fields(entry)
        except CatalogError as exc:
            self.add_catalog_error(exc)
            return data
        fields.pop("name")
        data["route"] = fields
        return data

    def add_catalog_error(self, error: CatalogError) -> None:
        """route_fields' or route_save's sentence, beside the field it is about."""
        where = {"targets": "target_1", "weights": "weight_1"}.get(error.field, error.field)
        self.add_error(where if where in self.fields else None, _sentence(error.problem))


def _initial(route: Route) -> dict:
    initial = {
        "name": route.name,
        "strategy": route.strategy,
        "capabilities": list(route.capabilities),
        "deadline_s": route.deadline_s,
        "retries": route.retries,
    }
    for i, target in enumerate(route.targets, start=1):
        initial[f"target_{i}"] = target
        if i <= len(route.weights):
            initial[f"weight_{i}"] = route.weights[i - 1]
    for name, floor in route.require.items():
        initial[f"floor_{name}"] = floor
    return initial


COMPARE_MIN_MODELS, COMPARE_MAX_MODELS = 2, 6


class CompareForm(forms.Form):
    prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 6}),
        max_length=32_000,
        help_text="Sent as one user message to every model you pick.",
    )
    models = forms.MultipleChoiceField(
        widget=forms.CheckboxSelectMultiple,
        label=f"Models to compare ({COMPARE_MIN_MODELS} to {COMPARE_MAX_MODELS})",
        error_messages={
            "invalid_choice": "“%(value)s” cannot be compared here: pick chat models with "
            "prices from the list."
        },
    )
    max_tokens = forms.IntegerField(
        min_value=1,
        max_value=32_000,
        initial=256,
        label="Most output tokens per model",
        help_text="Caps each answer, and so what each call can cost.",
    )

    def __init__(self, data=None, *, models: list[ModelInfo], initial=None):
        """`models`: those that can take a chat call and be billed for it."""
        super().__init__(data, initial=initial)
        self.fields["models"].choices = [(m.name, _priced_label(m)) for m in models]

    def clean_models(self):
        picked = list(dict.fromkeys(self.cleaned_data["models"]))
        if not COMPARE_MIN_MODELS <= len(picked) <= COMPARE_MAX_MODELS:
            raise forms.ValidationError(
                f"Pick between {COMPARE_MIN_MODELS} and {COMPARE_MAX_MODELS} models "
                f"to compare; you picked {len(picked)}."
            )
        return picked


def _priced_label(model: ModelInfo) -> str:
    prices = model.prices
    label = model_label(model)
    if prices is None or prices.input is None or prices.output is None:
        return label
    return f"{label}: {usd_exact(prices.input)} in, {usd_exact(prices.output)} out per 1M tokens"
