"""``python -m snrprune`` is the ``snrprune`` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
