"""The server: HTTP app, serving, admission, the rollout lifecycle, delivery, leases."""
