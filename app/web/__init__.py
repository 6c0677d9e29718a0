"""Public pages subscribers reach from the links in Warta's mail."""
