"""app.bounces."""
