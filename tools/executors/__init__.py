"""Executors: run vetted statements against a target. One small async interface (base.SqlExecutor)."""
