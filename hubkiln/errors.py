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
        count = f"{len(self.problems)} problem" + ("s" if len(self.problems) != 1 else "")
        super().__init__(
            f"the profile has {count}; nothing was written or built:\n  "
            + "\n  ".join(self.problems),
            hint="fix each key named above (the README's profile reference lists what is "
            "allowed), then run the command again",
        )


class BuildError(HubkilnError):
    """A build stage failed."""


class PreflightError(HubkilnError):
    """A host tool or capability the build needs is missing."""
