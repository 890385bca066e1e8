"""The web layer: blueprints, request parsing, the SSE response, the limiter."""
