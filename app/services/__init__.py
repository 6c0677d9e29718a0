"""Services: the use cases the API, CLI and workers call; they flush, callers commit."""
