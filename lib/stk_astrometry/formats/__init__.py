"""One module per file the tools exchange: reader and writer side by side (share/doc/formats.md)."""
