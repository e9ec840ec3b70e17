"""Integrations with servers and training loops (ASGI, WSGI, Hugging Face Trainer)."""
