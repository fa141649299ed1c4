"""The relay's store: what it holds (records.py), the SQLite store with content-addressed
payload files (sqlite.py, schema.py, payload_files.py) and an in-memory store behind the
same interface (memory.py)."""
