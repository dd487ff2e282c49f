"""The HTTP API: AWE's workflow endpoints and (under ``/api/v1``) the management plane."""
