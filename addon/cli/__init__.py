"""The `mitm-rules` command: check, explain, schema."""
