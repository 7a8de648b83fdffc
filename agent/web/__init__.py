"""The web review UI and REST API of ``lanterne serve`` (FastAPI, server-rendered Jinja2 pages).

``create_app(store, settings)`` returns the ASGI application; ``WebSettings`` holds its knobs.
"""

from agent.web._app import create_app
from agent.web._settings import WebSettings

__all__ = ["WebSettings", "create_app"]
