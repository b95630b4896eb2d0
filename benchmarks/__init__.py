"""crdtsync benchmarks: ``python -m benchmarks [--json] [--quick] [--only NAME ...]``.

Every figure is measured on the machine that runs the suite, in the same run; see
``benchmarks/README.md`` for what each workload measures.
"""
