"""STATE_DIR: the server's queue and results on disk (the server process only; no Django).

    format.py    file headers, framed and checksummed entries, their decoding
    journal.py   the append-only journal writer (group commit, FSYNC modes)
    restore.py   replaying snapshot + journals into plain dicts
    statedir.py  the directory: lock, start (restore), flusher, compaction, final snapshot
"""
