"""Exits: upstream proxies that accounts leave through, each token always through the same one
(binding.py), each exit's health (health.py), the exits at run time and a token's route (routing.py), a
flow's way out through its exit and the exit's login (connect.py), a time limit on an exit that never
answers (timeout.py), and the hooks of it all (hooks.py)."""
