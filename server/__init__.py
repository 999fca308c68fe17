"""The Tessera token server (installed as ``tessera.server``; needs ``pip install 'tessera[server]'``).

Layers, each importing only the ones below it:

- ``http/``   routes, request parsing and limits, CORS, how every answer is written
- ``tasks/``  background work beside the HTTP layer (never importing it): key rotation and
              reload, change notifications, garbage collection
- ``oauth/``  the protocol: client authentication, grants, tokens, refresh families, errors
- ``store/``  PostgreSQL: the pool, migrations and every SQL statement
- ``ops/``    logs, metrics and security events, used by every layer

``app.py`` wires them together; ``serve.py`` runs processes; ``cli.py`` is the ``tessera`` command.
"""
