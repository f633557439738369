"""The multi-machine cluster: a head (cluster/head.py) holding the tables,
a node agent per machine (cluster/agent.py), authenticated connections
(cluster/auth.py) and the CLI's process management (cluster/launch.py)."""
