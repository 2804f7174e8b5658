"""The `mitm-rules` command: check, explain, status, schema, reference."""
