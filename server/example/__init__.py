"""The example CRM app (installed as ``crdtsync_example``): ``app.toml`` and its rules."""
