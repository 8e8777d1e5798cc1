"""Tool front ends: one module per command-line tool, each exposing ``main(argv=None) -> int``."""
