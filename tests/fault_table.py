"""README's fault table ("When something goes wrong"), checked by the fault tests against what they saw, so that the
table cannot drift from what Tandem does.

A row's "what the user sees" quotes messages in double quotes, "…" standing for any text; "within N s" there bounds
the time until the user sees it. Its recovery cell may say "within N s" too: the time until Tandem works again (the
next prompt sampled), measured from the fault's message.
"""
import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## When something goes wrong"
WITHIN = re.compile(r"within (\d+(?:\.\d+)?) s\b")


@dataclass(frozen=True)
class Row:
    fault: str
    seen: str
    recovery: str

    @property
    def quotes(self) -> list[str]:
        return re.findall(r'"([^"]+)"', self.seen)


def rows() -> list[Row]:
    """The table's rows, from the section to the next heading."""
    text = README.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    cells = [[cell.strip() for cell in line.strip().strip("|").split("|")]
             for line in text.splitlines() if line.startswith("|")]
    return [Row(*row) for row in cells[2:]]


def row(fault: str) -> Row:
    (found,) = [r for r in rows() if fault in r.fault]
    return found


def matches(quote: str, message: str) -> bool:
    """Whether ``message`` is what ``quote`` says, "…" standing for any text."""
    return re.fullmatch(".*".join(map(re.escape, quote.split("…"))), message, re.DOTALL) is not None


def _bound(cell: str) -> float | None:
    found = WITHIN.search(cell)
    return float(found.group(1)) if found else None


def check(fault: str, message: str | None = None, seen_s: float | None = None, recovery_s: float | None = None
          ) -> None:
    """Assert that the row for ``fault`` quotes ``message`` and that the times it states hold: ``seen_s`` until the
    message, ``recovery_s`` until Tandem worked again. A time the row states must have been measured."""
    found = row(fault)
    print(f"fault table, {fault!r}: saw {message!r}" + (f" after {seen_s:.1f} s" if seen_s is not None else "")
          + (f", recovered in {recovery_s:.1f} s" if recovery_s is not None else ""))
    if message is not None:
        assert any(matches(quote, message) for quote in found.quotes), \
            f"README's row for {fault!r} quotes {found.quotes}, but Tandem said {message!r}"
    for bound, seconds, what in ((_bound(found.seen), seen_s, "what the user sees"),
                                 (_bound(found.recovery), recovery_s, "recovery")):
        if bound is not None:
            assert seconds is not None, f"README's row for {fault!r} states a time for {what}: measure it"
            assert seconds <= bound, f"README's row for {fault!r}: {what} within {bound:g} s, measured {seconds:.1f} s"
