"""What runs inside a measured layer's virtual environment: the measuring processes.

``workload.py`` (main and cluster benchmarks), ``bulk_worker.py`` (``--bulk``) and
``sync_worker.py`` (``--sync``) are started as scripts by the runners; the other modules are
their parts. Only the Channels layer API touches a layer, so any layer class can be measured.
"""
