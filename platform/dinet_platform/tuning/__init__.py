"""Ray Tune sweeps over the temporal and attention loss weights."""
