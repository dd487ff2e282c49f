"""The one configuration model: every setting once, with its type, default, bounds and a comment.

Each module owns one part; callers import from the module that owns what they use:

- ``model``: the sections, ``ServerConfig`` and ``WorkerConfig`` (docs/gen_config.py reads their
  ``#:`` comments into docs/configuration.md);
- ``values``: one setting's value: the boolean words, configKV strings, bounds, and refusals said in
  the key's own units;
- ``keys``: the server's keys and configKV changes (``apply_kv``, ``PERDURE_CFG_`` overrides);
- ``documents``: the configuration as stored and shown (``to_document``, ``from_document``) and its file.

Sources, lowest first: defaults; the file ``<data-dir>/config.json``; the copy in the database,
shared by every server on it (the file is the local copy of it: a file edited while the server was
down, and so newer than the database's copy, is taken into the database at start); environment
variables (``PERDURE_<NAME>`` settings, ``PERDURE_CFG_<key>``); command-line flags (``--set``). Changes
over the API go to the database and the file at once, and every server picks them up as a new
immutable, versioned snapshot (``configstore.Snapshot``).

A stored value out of range (written by an older version with looser bounds) does not stop a server:
``from_document(..., lenient=True)`` clamps it to the nearest bound, or falls back to the default
when it cannot be read at all, and logs a warning naming the key. Values arriving over the API, the
environment or the command line are refused instead (422 / errorCode 1003, or a one-line error).
"""
