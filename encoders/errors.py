"""The one error base that means "the command was asked wrongly": exit code 2, whichever room raised it."""


class UsageError(ValueError):
    """Input or configuration the job cannot run with (a bad flag, file, policy, model or database)."""
