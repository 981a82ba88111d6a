"""SQLite helpers shared by the velocity store and the scoring log: write lock and WAL checkpointer."""
