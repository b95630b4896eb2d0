"""The crdtsync relay server (installed as ``crdtsync_server``) and its example app."""
