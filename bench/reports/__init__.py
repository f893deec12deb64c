"""What turns records into the Markdown reports: summaries, ratios within rounds, targets.

Reading only: a report can be printed again from a run's JSON (``--render``), so nothing
here measures, and the tables' shape is what earlier results and the README refer to.
"""
