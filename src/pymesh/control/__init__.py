"""pymesh.control."""
