"""Clicks as weak supervision: Serve's logs → weighted training pairs (``fastemb feedback export``)."""
