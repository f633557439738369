"""How processes talk: length-prefixed frames over stream sockets.

``messages`` declares every message type; ``framing`` moves them. Locally the
sockets are socketpairs inherited by child processes, so nothing listens.
"""
