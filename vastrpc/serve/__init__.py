"""Serve mode: download and install a bundle, enter contexts, benchmark, serve calls."""
