"""dicom-db's GraphQL API over the database that `dicom-ingest` fills.

One concern per module: `columns` (what is exposed, the static column map), `sql` (quoting and dialect
phrases), `filters` (`where` to SQL), `pagination` (ordering and cursors), `db` (the only module that runs
SQL; one connection and read transaction per request), `loaders` (per-request batching), `types` and `schema`
(Strawberry), `auth` (bearer tokens, access levels, where the server may listen), `masking` (what a
de-identified token sees), `limits` (the checks a query passes before it runs), `app` and `settings`
(Starlette), `cli` (`dicom-api`).
"""
