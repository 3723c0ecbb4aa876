"""Two kinds of failure: the user's input (exit 2, one clear message) and our own bugs (traceback)."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or environment the user can fix. The CLI prints it without a traceback and exits 2.

    The message says what is wrong and where, the actual vs the expected value, and what to do.
    """

    exit_code = 2

    def __init__(self, what: str, *, where: str | None = None, actual: object = None,
                 expected: object = None, fix: str | None = None):
        self.what, self.where, self.actual, self.expected, self.fix = what, where, actual, expected, fix
        super().__init__(self.render())

    def render(self) -> str:
        head = f"{self.where}: {self.what}" if self.where else self.what
        parts = [head]
        if self.actual is not None or self.expected is not None:
            parts.append(f"  got {self.actual!r}, expected {self.expected}")
        if self.fix:
            parts.append(f"  fix: {self.fix}")
        return "\n".join(parts)
