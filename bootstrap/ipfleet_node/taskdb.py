"""The controller's task database: tasks and results in SQLite on the controller's disk.

They outlive a restart (`Client.get_result`, `db_query`). ipyparallel's SQLiteDB reads
its column types back in capitals (TEXT != text) and so moves to a new, empty table on
every start; compared without case, the one table is kept.

Installed by the controller's ipcontroller_config.py.
"""

from __future__ import annotations

from ipyparallel.controller.sqlitedb import SQLiteDB


class TaskDB(SQLiteDB):
    def _check_table(self):
        found = self._db.execute(f"PRAGMA table_info('{self.table}')").fetchall()
        wanted = [(key, self._types[key].lower()) for key in self._keys]
        return not found or [(row[1], row[2].lower()) for row in found] == wanted


def install(config, state_dir: str) -> None:
    """Tasks in STATE_DIR/tasks.db, table `tasks`."""
    config.IPController.db_class = TaskDB
    config.SQLiteDB.location = state_dir
    config.SQLiteDB.filename = "tasks.db"
    config.SQLiteDB.table = "tasks"
