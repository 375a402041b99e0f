"""User-facing errors: the CLI prints them as one clear message (no traceback) and exits 2."""


class UserError(Exception):
    """A mistake in the user's input (config, data file, arguments)."""


class DataError(UserError):
    """Bad data: the message names the file, the 1-based line and the field."""

    def __init__(self, path: str, line: int | None, field: str | None, problem: str) -> None:
        where = path if line is None else f"{path}:{line}"
        if field:
            where += f": field {field!r}"
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.field, self.problem = path, line, field, problem


class ConfigError(UserError):
    """Bad configuration or command-line override."""


def one_line(e: BaseException, limit: int | None = None) -> str:
    """An exception's message on one line (whitespace collapsed), cut to ``limit`` characters."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."
