"""The only code that touches mitmproxy's private API (its HTTP layer), guarded by a version check."""
