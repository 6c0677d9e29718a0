"""`warta backup`, `warta verify-backup` and `warta restore`: the whole instance in one file.

`bundle` is the file format (tar in zstd, optionally encrypted by `crypto`, with a manifest
of every member's size and SHA-256), `database` dumps and restores PostgreSQL and SQLite,
`snapshot` gathers what a backup holds while Warta runs, `restore` puts it back, and
`commands` are the CLI.
"""
