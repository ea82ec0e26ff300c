"""Upstreams kallm forwards to. Today one OpenAI-compatible upstream; the Provider seam is here."""
