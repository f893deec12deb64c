"""What decides what is measured, in which order, and writes the results: one module a mode.

A runner starts the measuring processes, interleaves what it compares (the order rotated
every round), checks and collects their reports, and hands the records to ``reports``.
"""
