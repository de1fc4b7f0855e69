"""The one exception type shared by every layer to mark *bad input*.

An :class:`InputError` means that something the user named cannot be used as given (a path that does
not exist, a folder that cannot be written, a value that does not fit the data), as opposed to a
failure while running. The command line reports it with exit status 2, like argparse's own errors.
Library code raises subclasses that also derive from the older, more specific types
(``DatasetNotFoundError``, ``TrainingError``), so existing ``except`` clauses keep working.
"""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """Something the user gave (a path, a value) cannot be used; the message says what to change."""
