"""The command-line tool, ``channels-valkey`` (``python -m channels_valkey``): ``check``,
``inspect`` and ``top``. It sits above both layers and may import any part of the package.
"""
