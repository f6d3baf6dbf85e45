"""The orchestration layer: Prefect flows, the ``unimoe`` CLI and deployments (wiring only)."""

from flows.server_guard import guard_ephemeral_server

# Prefect's embedded server ends with the process that started it, even one killed with SIGKILL
# (flows/server_guard.py); installing the guard costs nothing until Prefect starts a server.
guard_ephemeral_server()
