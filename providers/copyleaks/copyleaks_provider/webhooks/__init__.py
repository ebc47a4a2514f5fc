"""Receiving Copyleaks' webhooks: the receiver app, what it hands on, and the callback URLs' tokens."""
