"""The apps, on top of both the client library and the relay: the ``crdtsync`` command
(:mod:`.cli`), the demos (:mod:`.demo`, :mod:`.console`) and the reference web app
(:mod:`.webapp`). Only this layer imports ``crdtsync_server``.
"""
