"""Data sets and checks of user-supplied arrays."""
