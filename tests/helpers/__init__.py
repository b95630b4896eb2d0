"""What the tests share, one module per kind of help:

* :mod:`.harness` — a real relay on loopback (:class:`~.harness.RelayHarness`), raw
  protocol connections, ``eventually``, the example config's path;
* :mod:`.pair` — the client and relay state machines wired together with no sockets;
* :mod:`.relay_process` — ``crdtsync serve`` as a subprocess (for kills and signals);
* :mod:`.tcp_proxy` — a TCP proxy that cuts, truncates, delays and black-holes;
* :mod:`.updates` — hand-built Yjs updates and record documents;
* :mod:`.wire` — raw sessions, one-change pushes, hand-made changes, and the check
  that no frame carries a secret or a hidden field;
* :mod:`.faults` — the fault suites' scale and their figures report;
* :mod:`.tls` — a self-signed certificate; :mod:`.policy_hooks` — policy hooks named
  from test configurations.
"""
