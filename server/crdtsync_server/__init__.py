"""The crdtsync relay server: ``crdtsync serve --config app.toml``."""
