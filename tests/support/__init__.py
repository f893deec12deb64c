"""What the tests share that is not a test: real servers (servers, cluster), a misbehaving
network (proxy), and helpers for one part of the suite each (pubsub, wire_compat, cli,
compat_serializer).

Importable as ``support`` because pyproject.toml puts ``tests`` on pytest's ``pythonpath``
(and on mypy's ``mypy_path``); no test module imports another test module.
"""
