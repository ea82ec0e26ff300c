"""kallm's local SQLite database: virtual keys and the request log.

``connect`` opens (and migrates) the file with the same settings everywhere;
``DatabaseWriter`` owns the one writing connection of a running server in a
background thread, so logging a request is a queue put on the event loop and
a slow, locked or full disk costs dropped log rows, never a slow or failed
request.
"""

from kallm.db.connection import DEFAULT_BUSY_TIMEOUT_MS, connect, default_db_path
from kallm.db.migrations import MIGRATIONS, migrate, schema_version
from kallm.db.requestlog import DatabaseWriter, RequestRow
from kallm.errors import SchemaTooNew

__all__ = [
    "DEFAULT_BUSY_TIMEOUT_MS",
    "MIGRATIONS",
    "DatabaseWriter",
    "RequestRow",
    "SchemaTooNew",
    "connect",
    "default_db_path",
    "migrate",
    "schema_version",
]
