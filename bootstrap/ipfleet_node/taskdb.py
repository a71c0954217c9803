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

    def oldest_finished(self, count: int) -> list[str]:
        """The COUNT tasks that finished first (success or failure)."""
        rows = self._db.execute(
            f"SELECT msg_id FROM '{self.table}' WHERE completed IS NOT NULL ORDER BY completed LIMIT ?", (count,)
        )
        return [row[0] for row in rows]

    def drop_records(self, msg_ids: list[str]) -> None:
        """Delete MSG_IDS, in statements SQLite takes (at most 32,766 parameters)."""
        for start in range(0, len(msg_ids), 10_000):
            batch = msg_ids[start : start + 10_000]
            marks = ",".join("?" * len(batch))
            self._db.execute(f"DELETE FROM '{self.table}' WHERE msg_id IN ({marks})", batch)
        self._db.commit()


def install(config, state_dir: str) -> None:
    """Tasks in STATE_DIR/tasks.db, table `tasks`."""
    config.IPController.db_class = TaskDB
    config.SQLiteDB.location = state_dir
    config.SQLiteDB.filename = "tasks.db"
    config.SQLiteDB.table = "tasks"
