"""What every part of the benchmark uses: statistics, the machine, processes, the servers.

Standard library only (``resp`` is its own RESP client), so the runners work on any
``python3`` and the measuring processes in every venv; ``localcluster`` starts private
clusters and ``lagproxy`` runs as the failover's replication-lag proxy.
"""
