"""The one exception type for errors a user can cause.

Everything the user can get wrong (a missing file, a malformed or inconsistent
configuration, a dataset of the wrong schema, non-finite data) is raised as
`ClosureError` with a one-line message naming the file, key or value. Only
`closure.cli` turns it into a line on stderr and exit status 2.
"""


class ClosureError(Exception):
    """A user-facing error: its message is one line that names the problem."""
