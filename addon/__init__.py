"""A mitmproxy addon that rewrites outgoing requests from the rules in a rules file."""

__version__ = "0.1.0"
