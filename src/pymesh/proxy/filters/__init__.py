"""pymesh.proxy.filters."""
