"""Talking to trainers: the chat format, the HTTP client with retries, the trainer policy."""
