"""Repositories: query building and bulk writes; they flush, callers commit."""
