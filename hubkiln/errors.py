"""Error types shared by every hubkiln module.

Each error carries a message that says what went wrong and, where it helps,
a hint that says what to do next. The invoke tasks turn them into `Exit`.
"""


class HubkilnError(Exception):
    """Base class: a failure the user can act on."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class ProfileError(HubkilnError):
    """A profile failed validation. `problems` lists every error found."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class BuildError(HubkilnError):
    """A build stage failed."""


class PreflightError(HubkilnError):
    """A host tool or capability the build needs is missing."""
