"""The ``vmopt`` command line."""
