"""The example CRM app: ``app.toml`` (schema, sharing, roles) and its custom rules."""
