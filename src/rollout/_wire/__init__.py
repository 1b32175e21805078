"""The protocol on the wire: models, the one codec, 422 validation, the synchronous variant."""
