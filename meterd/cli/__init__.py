"""The ``meterd`` command line."""
