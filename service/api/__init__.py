"""REST API v1 routers. Routes are thin: they parse, authorise, call one service module."""
