"""The ``crosszone`` command line."""
