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


class ProblemsError(HubkilnError):
    """Input failed validation. `problems` lists every error found, one line each."""

    #: How the message names the input, and where its keys are documented.
    subject = "the input has"
    reference = "its documentation"
    consequence = "nothing was written"

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        count = f"{len(self.problems)} problem" + ("s" if len(self.problems) != 1 else "")
        super().__init__(
            f"{self.subject} {count}; {self.consequence}:\n  " + "\n  ".join(self.problems),
            hint=f"fix each key named above ({self.reference} lists what is allowed), "
            "then run the command again",
        )


class ProfileError(ProblemsError):
    """A profile failed validation."""

    subject = "the profile has"
    reference = "the README's profile reference"
    consequence = "nothing was written or built"


class BuildError(HubkilnError):
    """A build stage failed."""


class PreflightError(HubkilnError):
    """A host tool or capability the build needs is missing."""
