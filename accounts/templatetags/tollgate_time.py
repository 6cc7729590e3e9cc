from datetime import timedelta

from django import template

register = template.Library()


@register.filter
def duration(value: timedelta | None) -> str:
    """A cool-off or validity period for people: "15 minutes", "1 hour", "2 days"."""
    if value is None:
        return "a while"
    seconds = int(value.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    minutes = -(-seconds // 60)  # rounded up: never promise less waiting than there is
    return f"{minutes} minute{'' if minutes == 1 else 's'}"
