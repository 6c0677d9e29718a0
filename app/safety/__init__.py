"""Content safety: spam scoring (spamd), malware scanning (clamd), preflight, sender domain checks."""
