"""Shared, import-light building blocks for every stage of the upgrade chain.

Everything here must stay cheap to import: PID 1, preinit and the post-pivot writer load it.
"""
