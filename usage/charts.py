"""Charts for the web UI, drawn on the server as SVG by pygal: no JavaScript, nothing fetched
from a CDN, and the same picture in every browser. The figures come from the ledger's reads;
the chart only draws them (floats for geometry), the pages print the exact Decimals beside it."""

from collections.abc import Sequence
from datetime import date
from decimal import Decimal

import pygal
from pygal.style import Style

# Eight hues that stay apart for the common colour-vision deficiencies (Okabe–Ito order,
# darkened where needed for 3:1 against white); the ninth series is "Other", grey.
PALETTE = (
    "#0072b2",
    "#d55e00",
    "#009e73",
    "#cc79a7",
    "#8a6d00",
    "#56b4e9",
    "#6a3d9a",
    "#b22222",
    "#7f7f7f",
)
STYLE = Style(
    background="#ffffff",
    plot_background="#ffffff",
    foreground="#1d2330",
    foreground_strong="#1d2330",
    foreground_subtle="#dde1e8",
    colors=PALETTE,
    font_family="system-ui, sans-serif",
    label_font_size=12,
    major_label_font_size=12,
    legend_font_size=13,
    title_font_size=15,
    opacity="1",
    opacity_hover=".8",
)
# Series beyond this many get folded into "Other".
MAX_SERIES = len(PALETTE) - 1


def stacked_series(
    groups: Sequence[dict], *, days: Sequence[date], split: str, label=str
) -> dict[str, list[Decimal]]:
    """Per-day cost series from `usage_summary(group_by=("day", split))`, the costliest first,
    those past MAX_SERIES summed as "Other"; every series has one value per day."""
    totals: dict[str, Decimal] = {}
    for group in groups:
        name = label(group[split])
        totals[name] = totals.get(name, Decimal(0)) + group["cost_usd"]
    ranked = sorted(totals, key=lambda name: (-totals[name], name))
    kept = set(ranked[:MAX_SERIES] if len(ranked) > MAX_SERIES + 1 else ranked)
    index = {day: n for n, day in enumerate(days)}
    series: dict[str, list[Decimal]] = {
        name: [Decimal(0)] * len(days) for name in ranked if name in kept
    }
    if len(kept) < len(ranked):
        series["Other"] = [Decimal(0)] * len(days)
    for group in groups:
        name = label(group[split])
        position = index.get(group["day"])
        if position is not None:
            series[name if name in kept else "Other"][position] += group["cost_usd"]
    return series


def spend_chart_svg(*, days: Sequence[date], series: dict[str, list[Decimal]], title: str) -> str:
    """A stacked bar chart of USD per day, one bar per day and one colour per series."""
    chart = pygal.StackedBar(
        style=STYLE,
        js=[],
        disable_xml_declaration=True,
        width=1000,
        height=380,
        title=title,
        legend_at_bottom=True,
        legend_at_bottom_columns=4,
        truncate_legend=28,
        x_label_rotation=-40,
        show_minor_x_labels=False,
        x_labels_major_every=max(1, len(days) // 12),
        value_formatter=lambda value: f"${value:,.2f}",
        no_data_text="No spend in this range",
        margin=8,
    )
    chart.x_labels = [day.strftime("%b %-d") for day in days]
    for name, values in series.items():
        chart.add(name, [float(value) if value else None for value in values])
    return chart.render(is_unicode=True)
