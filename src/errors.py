"""One exception type for bad user input.

The entry point turns a ``UserError`` into a one-line message and a non-zero exit
code instead of a traceback: the problem is the input, not the code.
"""


class UserError(ValueError):
    """Bad configuration or input data, reported to the user in one line."""


def did_you_mean(name: str, options) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(options), n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"{hint} Available: {', '.join(sorted(options))}."
