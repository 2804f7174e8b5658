"""What the proxy shows of itself: the status document, its text, the log's summary line, the status server with its Prometheus metrics and page."""
