"""dicom-db's GraphQL API over the database that `dicom-ingest` fills.

One concern per module: `columns` (what is exposed, the static column map), `sql` (quoting and dialect
phrases), `filters` (`where` to SQL), `pagination` (ordering and cursors), `db` (the only module that runs
SQL), `loaders` (per-request batching), `types` and `schema` (Strawberry), `app` and `settings` (Starlette),
`cli` (`dicom-api`).
"""
