"""Offline RL datasets: the in-memory Trajectories container, D4RL readers, batch sampling."""
