"""Subcommands of the `elastic` CLI, one module each."""
