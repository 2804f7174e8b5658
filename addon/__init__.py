"""A mitmproxy addon that rewrites outgoing requests from the rules in a rules file."""
