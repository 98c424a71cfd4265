"""The settings table, made from `rerank.server._config.Settings`' declaration.

The docs site's build puts it into the configuration page (docs/hooks/reference.py);
`python tools/settings_table.py` prints it.
"""

from __future__ import annotations

from enum import Enum

from rerank.server._config import fields, names, range_of


def _default(value: object) -> str:
    if value is None or value == frozenset():
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"`{value.value if isinstance(value, Enum) else str(value).removesuffix('.0')}`"


def table() -> str:
    """One row per setting a user sets (derived ones left out), in the declaration's order."""
    rows = ["| setting | flag / variable | range | default |", "|---|---|---|---|"]
    for name, field in fields().items():
        named = names(name)
        if not str(named):
            continue
        spelled = " / ".join(f"`{part}`" for part in str(named).split(" / "))
        default = named.shown_default or _default(field.get_default(call_default_factory=True))
        rows.append(f"| {field.description} | {spelled} | {range_of(field)} | {default} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
