"""pymesh.observe."""
