"""pymesh.proxy."""
