"""pymesh.tls."""
