"""Tests of the embedded MTA."""
