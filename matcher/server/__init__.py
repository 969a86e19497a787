"""The operator's side: the gRPC server, jobs, the store, the operator CLI and console.

Nothing under clients/ imports this package; it builds on the shared core in matcher/.
"""
