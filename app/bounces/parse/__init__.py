"""Bounces and complaints, protocol-free: parse reports (RFC 3464 DSN, RFC 5965 ARF,
non-standard bounces), recognise auto-replies, find the ledger row, classify the failure.
Storage and actions live in `app/bounces/service.py`."""
