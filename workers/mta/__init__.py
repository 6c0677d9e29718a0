"""The embedded MTA: listeners, spool, delivery and DKIM signing."""
