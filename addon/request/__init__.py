"""The request side: which rules match, the plan of edits, applying it to headers, cookies and JSON
bodies, stream detection, and the request hook (rewriter.py)."""
