"""Request and response schemas, in families: XCreate, XUpdate, XRead."""
