"""Placeholder: filled in by its issue."""


def add_parsers(sub):
    pass
