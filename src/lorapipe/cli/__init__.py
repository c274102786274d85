"""Command-line interface: thin argument parsing, one handler per command, errors turned into exit codes.

Each command group lives in its own module exposing `register(subparsers)`; handlers import their implementation
lazily so that `lorapipe --help` never loads torch or diffusers.
"""
