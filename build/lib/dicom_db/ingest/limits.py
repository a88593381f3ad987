"""What one file may cost the ingest: the defaults of `--max-header-bytes` and `--file-timeout`.

A worker reads at most `max_header_bytes` of a header (element lengths, undefined lengths and deflated data are
checked against it and against the file's size before anything is allocated), so its memory stays within a
small multiple of it whatever a file claims; a file whose reading takes longer than `file_timeout` seconds
(a hung network file system, a file swapped for something that blocks) gets its worker stopped and is reported.
"""

DEFAULT_MAX_HEADER_BYTES = 64 * 1024 * 1024
DEFAULT_FILE_TIMEOUT = 60.0
