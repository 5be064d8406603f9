"""Serviceportalen's pages for customers (rules §11), served beside the API: `portal_routes`."""

from gateway.http.portal.routes import portal_routes

__all__ = ["portal_routes"]
