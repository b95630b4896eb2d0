"""The core both sides stand on: the wire protocol (:mod:`.protocol`), the schema and
field types (:mod:`.schema`, :mod:`.fieldtypes`), record documents (:mod:`.record`,
:mod:`.textdiff`), the Yjs update parser (:mod:`.yupdate`), the shared SQLite format
helpers (:mod:`.sqlite_meta`) and the errors (:mod:`.exceptions`).

The core imports neither the client library (:mod:`crdtsync.client`) nor the relay
(``crdtsync_server``); both import it.
"""
