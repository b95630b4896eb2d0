"""What the tests share, one module per kind of help:

* :mod:`.harness` — a real relay on loopback (:class:`~.harness.RelayHarness`), raw
  protocol connections, ``eventually``, the example config's path;
* :mod:`.pair` — the client and relay state machines wired together with no sockets;
* :mod:`.relay_process` — ``crdtsync serve`` as a subprocess (for kills and signals);
* :mod:`.tcp_proxy` — a TCP proxy that cuts, truncates, delays and black-holes;
* :mod:`.updates` — hand-built Yjs updates and record documents;
* :mod:`.faults` — the fault suites' scale and their figures report;
* :mod:`.tls` — a self-signed certificate; :mod:`.policy_hooks` — policy hooks named
  from test configurations.
"""
