"""Paper analyses built on the attribution core (linear probe, invariance, ...)."""
