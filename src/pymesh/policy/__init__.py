"""pymesh.policy."""
