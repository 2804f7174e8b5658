"""Small helpers every layer may use: masking secrets, the flow comment, blocking work off the event loop, file polling."""
