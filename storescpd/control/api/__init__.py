"""The control API: FastAPI on uvicorn in its own process, exec'd by the supervisor.

``storescpd.control.api.app`` builds the application (it reaches the supervisor only through the
control socket), ``python -m storescpd.control.api`` runs it on a socket the supervisor passes in,
``storescpd.config.api_address`` holds the address and token rules the configuration checks.
"""
