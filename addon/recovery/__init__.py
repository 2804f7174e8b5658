"""The answer side: what an answer means (verdict.py), replaying a refused request with the next token
(recovery.py, retry.py, replay.py, streamed.py), and streaming event streams to the client (streamtap.py)."""
