"""Deterministic workflow code and the durable contracts it shares with activities and client."""
