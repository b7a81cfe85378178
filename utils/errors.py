"""The one exception type for mistakes a user can fix: the scripts print it on one line and exit with code 2."""


class UserError(Exception):
    """A bad config value, a missing file, a mismatched checkpoint: the message names the problem and the fix."""
