"""The one exception a user sees.

Anything a user can get wrong (a missing file, a bad config key, a tokenizer that does not
match the codes) raises `VqgenError` with a message that names the file, the field and the fix.
`vqgen.cli` prints it as one line and exits non-zero; `assert` is kept for our own invariants.
"""


class VqgenError(Exception):
    """A user-facing error: the message is the whole story, no traceback needed."""
