"""The one exception type for mistakes a user can fix, and the wrapper that turns it into one line on stderr and
exit code 2 for every command."""
import functools
import sys


class UserError(Exception):
    """A bad config value, a missing file, a mismatched checkpoint: the message names the problem and the fix."""


def command(main):
    """Wraps a command's main(argv): a UserError becomes one line on stderr and exit code 2, no traceback."""
    @functools.wraps(main)
    def run(argv=None):
        try:
            return main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    return run
