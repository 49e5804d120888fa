"""Agent and world processes, environments, policies, training, the ddcl CLI."""
