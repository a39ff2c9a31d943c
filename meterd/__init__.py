"""meterd: a usage-metering daemon built on the ``supervisors`` library."""

__version__ = "0.1.0"
