"""app.messages."""
