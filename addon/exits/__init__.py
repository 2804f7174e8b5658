"""Exits: upstream proxies that accounts leave through, each token always through the same one
(binding.py), each exit's health (health.py), and the route a flow takes (routing.py)."""
