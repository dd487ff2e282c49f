"""Spot protection: checkpoints of running work, taken as it goes and on an interruption notice, and
restored on another node.

``policy`` (what to do for a workunit) and ``manifest`` (what a checkpoint is) are shared by the
server and the worker; ``snapshot``, ``store``, the engines and ``interruption`` run on workers,
except that the server hosts a ``store.DirectoryStore`` when workers share no filesystem.
"""
