"""Refuses requests and connections to the proxy itself and to mitmweb."""
