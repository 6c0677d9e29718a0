"""app.audience."""
