"""``python -m crosszone``: the same as the ``crosszone`` command."""

from crosszone.cli.main import main

if __name__ == "__main__":
    main()
