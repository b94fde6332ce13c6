"""Subcommand adapters: parse arguments, call one library function, print the result."""
