"""Manifest schema, validation, folder scanning and example manifests."""
