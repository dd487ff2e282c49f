"""``perdure worker``: a node that runs workunits in K slots, each slot a client of the server."""
