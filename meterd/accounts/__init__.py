"""The accounts layer: one meter actor per account and its exact windowed usage.

See docs/accounts.md. The aggregation arithmetic lives in :mod:`meterd.accounts.aggregate`.
"""
