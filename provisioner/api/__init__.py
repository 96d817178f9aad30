"""HTTP routers: the public API under /api/v1 and the service endpoints."""
