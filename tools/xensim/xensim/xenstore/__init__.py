"""Simulated xenstored: the tree (store), the wire codec and the socket server."""

from xensim.xenstore.store import Conn, ConnStats, LogEntry, Store, XsError, format_access_log

__all__ = ["Conn", "ConnStats", "LogEntry", "Store", "XsError", "format_access_log"]
