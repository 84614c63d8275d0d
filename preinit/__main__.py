from preinit.cli import entry

entry()
