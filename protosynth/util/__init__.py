"""Helpers every stage shares: atomic file writes and hashes, image conversion, progress bars, the
facts manifests record, and the field declarations configs are written with (``options``)."""
