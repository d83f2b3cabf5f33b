"""The egress proxy: the only way out of a session whose policy has ``network.mode =
"allowlist"``.

Reading order: where a session finds the proxy (``address``), which destinations a
policy allows (``destinations``), the strict HTTP request-head parser (``http_head``),
the proxy that runs as a process of its own (``proxy``, ``budget``, ``__main__``), and
the service's side: starting it and handing it each session's listener (``client``).
"""
