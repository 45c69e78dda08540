"""bnref."""
