"""Extra `edge-agent` subcommands, one module each, found at start-up.

A module here defines `register(subparsers) -> None`, adds its parser(s) and sets
`func=handler` with `set_defaults`; `handler(args) -> int` returns the exit code. Modules import
their heavy dependencies inside the handler, so `edge-agent status` stays fast on a Pi. Modules whose
name starts with `_` are shared helpers (`_exits`: exit codes and the default config path).
"""
