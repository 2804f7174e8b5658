"""The rules file, read once into frozen records: the schema and its located errors, matching, value templates."""
