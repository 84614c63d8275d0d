from upgraded.cli import entry

entry()
