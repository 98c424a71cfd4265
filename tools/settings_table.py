"""The README's settings table, made from `rerank.server._config.Settings`' declaration.

`python tools/settings_table.py` prints it; `--write` puts it into README.md between its two
markers. tests/unit/test_settings.py fails when the README's table differs from this one.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path

from rerank.server._config import fields, names, range_of

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN = "<!-- settings table: made by tools/settings_table.py from rerank.server._config -->"
END = "<!-- end of the settings table -->"


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


def readme_with_table(readme: str) -> str:
    """`readme` with the text between the markers replaced by `table()`."""
    before, _, rest = readme.partition(BEGIN + "\n")
    _, _, after = rest.partition(END)
    return f"{before}{BEGIN}\n{table()}\n{END}{after}"


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        README.write_text(readme_with_table(README.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        print(table())
