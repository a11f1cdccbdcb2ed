"""The facility view (``emstream hub``): read-only, every monitor's published summaries in one
place, in the terminal and in a small web page served on loopback.

Data path: :mod:`~emstream.hub.subscriber` (one ZeroMQ SUB socket per monitor, CURVE where it is
not loopback) -> :mod:`~emstream.hub.state` (what each microscope is doing, pure Python) ->
:mod:`~emstream.hub.terminal` (rich) and :mod:`~emstream.hub.web` (aiohttp). Nothing goes back to
the microscopes: SUB sockets only receive, the web page has only GET routes.
"""
