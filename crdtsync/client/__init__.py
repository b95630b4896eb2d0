"""The client library, on :mod:`crdtsync.core`: the facade (:mod:`.facade`, the
:class:`~crdtsync.Client` an app holds), the replica and its outbox (:mod:`.replica`,
on the durable local store :mod:`.store`), the sans-I/O sync session (:mod:`.sync`),
the values an app reads (:mod:`.model`) and the events it can show (:mod:`.events`).

Import the public names from :mod:`crdtsync`. Nothing here imports the relay.
"""
