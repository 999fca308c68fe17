"""The HTTP layer: routes, request parsing and limits, CORS, and how every answer is written."""
