"""Handlers that install one artifact each (raw, flash, ubivol, rawfile, archive, files, bootenv, scripts)."""
