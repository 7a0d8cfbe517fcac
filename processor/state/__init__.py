"""state subpackage."""
