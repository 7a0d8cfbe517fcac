"""kafka subpackage."""
