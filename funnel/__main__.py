from funnel.cli import entry

entry()
