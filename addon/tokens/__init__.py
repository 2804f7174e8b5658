"""Account tokens: the tokens file, each token's health and the rotation, the breaker, the state file,
renewed sessions, and health shared through Redis."""
