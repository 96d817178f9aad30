"""The web view at /ui: racks, nodes, discovered machines and actions, rendered on the
server (Jinja2) with a small script of its own for live updates (Server-Sent Events).
See docs/ui.md."""

from provisioner.ui.routes import router

__all__ = ["router"]
