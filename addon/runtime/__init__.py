"""What the hooks read at run time: the loaded rules, the token pools, the value sources, reloads, and
the token commands."""
