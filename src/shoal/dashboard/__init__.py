"""shoal's web dashboard: what runs where, what waits on what, what failed,
in a browser; and the cluster's Prometheus endpoint (``/metrics``).

    python -m shoal.dashboard [--address HOST:PORT] [--host H] [--port P]

`shoal start --head` starts it beside the head (the ``dashboard`` extra:
aiohttp and prometheus-client). It is one more driver of the cluster and
uses only shoal's public API (shoal.util.state, shoal.util.doctor); the
runtime never imports it. Pages are plain HTML and JavaScript shipped in
the package (static/); nothing is fetched at run time.
"""
