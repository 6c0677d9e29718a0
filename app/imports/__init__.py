"""CSV import internals: `reader` turns a file into validated chunks, `writer` upserts them.

The job lifecycle (queue, run, progress, recovery) lives in `app.services.imports`.
"""
