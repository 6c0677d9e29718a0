"""The message archive (raw bytes of what was sent, in day files) and retention of old rows."""
