"""app.mail."""
